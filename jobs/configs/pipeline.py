"""The pipeline configuration: one model's path from raw data to a release, and its presets.

``python -m jobs.pipeline --config <preset>`` runs the stages in order, each the job a user
would submit (``jobs.ingest``, ``jobs.train``, ``jobs.evaluate``, ``jobs.compress``,
``jobs.release``) with the flags its field here gives (``{"max_accuracy_drop": 0.01}`` is
``--max-accuracy-drop 0.01``). The flags that chain the stages (which version, which
dataset) are the pipeline's own: a field naming one is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.dataset import DATASET_NAME
from models.exceptions import ModelError
from models.refs import ModelRef

Flag = str | int | float | bool
Flags = dict[str, Flag]
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


class Stage(str, Enum):
    """The stages, in the order they run."""

    INGEST = "ingest"
    TRAIN = "train"
    EVALUATE = "evaluate"
    COMPRESS = "compress"
    EVALUATE_COMPRESSED = "evaluate_compressed"
    """The compressed version through the same gates (it is the one released)."""
    RELEASE = "release"


# Flags the pipeline sets itself: the dataset for every stage, the versions it chains, and
# train's promote=false (evaluate and release decide what serves, not the train gate).
_OWN = {
    "ingest": {"dataset"},
    "train_set": {"dataset", "promote"},
    "evaluate": {"model", "dataset", "promote"},
    "compress": {"from", "from_", "dataset"},
    "release": {"model", "candidate", "status", "abort", "no_wait"},
}


class PipelineConfig(BaseModel):
    """Which data, which model and which gates one run of ``jobs.pipeline`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    dataset: str = Field(
        "digits",
        pattern=DATASET_NAME,
        description="Dataset ingested, trained and evaluated on (--dataset).",
    )
    ingest: Flags | None = Field(
        default_factory=dict,
        description="Further jobs.ingest flags, e.g. {'shards': 4}; None: no ingest stage "
        "(the dataset is on the storage URI already).",
    )
    train: str = Field("digits_cnn", description="Training preset (jobs.train --config).")
    train_set: list[str] = Field(
        default_factory=list, description="jobs.train --set overrides, e.g. ['epochs=5']."
    )
    from_: str | None = Field(
        None,
        alias="from",
        description="Fine-tune this version (jobs.train --from, e.g. digits@champion) "
        "instead of training fresh weights.",
    )
    evaluate: Flags = Field(
        default_factory=dict,
        description="jobs.evaluate flags, its gates: e.g. {'max_accuracy_drop': 0.01}.",
    )
    compress: Flags | None = Field(
        None,
        description="jobs.compress flags, e.g. {'method': 'int8_dynamic'}; None: no "
        "compression. The compressed version is gated like the trained one and released.",
    )
    release: Flags | None = Field(
        default_factory=dict,
        description="jobs.release flags, e.g. {'steps': '5,50,100'}; None: stop once the "
        "version is the candidate.",
    )

    @field_validator("ingest", "evaluate", "compress", "release")
    @classmethod
    def _flag_names(cls, flags: Flags | None, info) -> Flags | None:
        for key in flags or {}:
            if not _KEY.fullmatch(key):
                raise ValueError(f"{key!r}: write a flag as its field name, e.g. min_accuracy")
            if key in _OWN[info.field_name]:
                raise ValueError(f"{key!r} is set by the pipeline; leave it out")
        return flags

    @field_validator("train_set")
    @classmethod
    def _overrides(cls, pairs: list[str]) -> list[str]:
        for pair in pairs:
            if pair.partition("=")[0] in _OWN["train_set"]:
                raise ValueError(f"{pair!r} is set by the pipeline; leave it out")
        return pairs

    @field_validator("from_")
    @classmethod
    def _reference(cls, ref: str | None) -> str | None:
        if ref is not None:
            try:
                ModelRef.parse(ref)
            except ModelError as err:
                raise ValueError(str(err)) from None
        return ref

    def stages(self) -> list[Stage]:
        """The stages this config runs, in order."""
        skip = set()
        if self.ingest is None:
            skip.add(Stage.INGEST)
        if self.compress is None:
            skip |= {Stage.COMPRESS, Stage.EVALUATE_COMPRESSED}
        if self.release is None:
            skip.add(Stage.RELEASE)
        return [stage for stage in Stage if stage not in skip]


def as_argv(flags: Flags) -> list[str]:
    """``{"max_accuracy_drop": 0.01, "promote": False}`` as
    ``["--max-accuracy-drop", "0.01", "--promote", "false"]``."""
    argv = []
    for key, value in flags.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        argv += [f"--{key.replace('_', '-')}", text]
    return argv


def digits() -> PipelineConfig:
    """Ingest digits, train the CNN, gate it against the champion, canary it."""
    return PipelineConfig()


def digits_int8() -> PipelineConfig:
    """As ``digits``, releasing the int8-quantized version of the trained model."""
    return PipelineConfig(compress={"method": "int8_dynamic"})


def digits_fine_tune() -> PipelineConfig:
    """Fine-tune the champion for a few epochs at a lower learning rate, then gate and
    release it."""
    return PipelineConfig(from_="digits@champion", train_set=["epochs=5", "lr=5e-4"])


def digits_refresh() -> PipelineConfig:
    """New data has arrived (``--source``, named by ``--dataset``): fine-tune the champion
    on it, gate it against the champion on that data, canary it.

    After a drift the champion is the stale one (in the e2e test it gets 18 % of the new
    scans right): agreement with it says nothing, so the canary is judged on errors,
    latency and the labels clients feed back (``/v1/models/digits/feedback``); a broken
    candidate has failed the evaluate stage's gates on the new data before that."""
    return PipelineConfig(
        dataset="digits_new",
        from_="digits@champion",
        train_set=["epochs=5", "lr=5e-4"],
        release={"steps": "10,50,100", "min_agreement": 0.0},
    )


def digits_smoke() -> PipelineConfig:
    """A short path for tests of the plumbing: 2 epochs, no accuracy gates, no release;
    registered as ``digits_pipeline`` so that ``digits``' aliases stay where they are."""
    return PipelineConfig(
        train="digits_cnn_smoke",
        train_set=["epochs=2", "register_as=digits_pipeline"],
        evaluate={"max_accuracy_drop": 1.0},
        release=None,
    )


PIPELINES: dict[str, Callable[[], PipelineConfig]] = {
    f.__name__: f for f in (digits, digits_int8, digits_fine_tune, digits_refresh, digits_smoke)
}


def pipeline(name: str) -> PipelineConfig:
    try:
        return PIPELINES[name]()
    except KeyError:
        raise ValueError(
            f"Unknown pipeline {name!r}; presets: {', '.join(sorted(PIPELINES))}."
        ) from None
