"""The training configuration and its presets.

``TrainConfig`` is a frozen dataclass that pydantic validates whenever one is made, by a
preset, by ``dataclasses.replace`` or from ``--set`` overrides: a value of the wrong type
or out of its bounds fails there, naming the field, instead of deep inside a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, field, fields, replace
from typing import Annotated, Literal

from pydantic import (
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)
from pydantic.dataclasses import dataclass

from cluster.topology import Datacenter
from jobs.configs.validation import OverrideError, one_line, split_overrides
from models.exceptions import ModelError
from models.refs import ModelRef
from models.signature import LM
from models.zoo import architecture

Fraction = Annotated[float, Field(ge=0, le=1)]
SCALARS = (bool, int, float, str)
"""The field types a ``key=value`` override (or a search dimension) can set."""
_OWN_FLAGS = ("name", "init_from")
"""Fields a job sets from flags of their own (``--name``, ``--from``), never ``--set``."""


@dataclass(frozen=True, slots=True)
class ChampionGate:
    """The test metric a freshly trained version must pass to become ``champion``."""

    metric: str
    threshold: float
    higher_is_better: bool

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.higher_is_better else value <= self.threshold


@dataclass(
    kw_only=True,
    frozen=True,
    slots=True,
    config=ConfigDict(extra="forbid", use_attribute_docstrings=True),
)
class TrainConfig:
    """One training run: model, data, DeepSpeed and the gate that makes a champion."""

    name: str
    """Run name: the Ray Train run folder and the MLflow run name."""
    architecture: str = "digits_cnn"
    """Model architecture from the zoo (``models.zoo.ARCHITECTURES``)."""
    model_options: dict = field(default_factory=dict)
    """Keyword options of the architecture's constructor."""
    dataset: str = "digits"
    """Dataset name under ``<storage>/datasets`` (written by ``jobs.ingest``)."""
    register_as: str = "digits"
    """Registered model name the trained version is added to."""
    num_workers: PositiveInt = 2
    """Ray Train workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); CPU workers use gloo."""
    datacenter: str = ""
    """Run the workers and the data reads in this datacenter only (a Ray region label);
    empty: wherever there is room. A region without nodes leaves the run waiting for them."""
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 32
    """Micro-batch per worker; the global batch is batch_size x num_workers."""
    lr: PositiveFloat = 2e-3
    weight_decay: float = 1e-4
    zero_stage: int = Field(2, ge=0, le=3)
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3."""
    offload_optimizer: bool = False
    """ZeRO-Offload: optimizer state and step on the CPU (DeepSpeedCPUAdam); stage >= 1."""
    offload_params: bool = False
    """ZeRO-Infinity style: parameters live on the CPU between uses; stage 3 only."""
    grad_accum: PositiveInt = 1
    """Micro-batches per optimizer step (the global batch grows by this factor)."""
    grad_clip: NonNegativeFloat = 1.0
    """Gradient norm clip; 0 turns clipping off."""
    seed: int = 0
    augment: bool = True
    """Apply the architecture's training augmentation, if it has one."""
    cache_data: bool = True
    """Read the shards once and keep the blocks in Ray's object store across epochs (the
    cluster's memory, not the driver's). False streams from storage every epoch: for
    datasets larger than the cluster's object store."""
    data_source: Literal["ray_data", "shard_store"] = "ray_data"
    """Where workers read batches: ``ray_data`` (Ray Data over the Parquet shards) or
    ``shard_store`` (``actors.shard_store``: the run's own group of replica actors holding
    the shards in the object store; each rank fetches whole shards zero-copy and cuts its
    batches locally: 10x+ faster delivery in ``bench.ingest_throughput``)."""
    shard_replicas: PositiveInt = 2
    """``shard_store``: replicas per shard on distinct nodes (2 survives a node's loss;
    capped at the nodes alive)."""
    checkpoint_every: PositiveInt = 5
    """Epochs between checkpoints (the last epoch always checkpoints)."""
    max_failures: int = Field(2, ge=-1)
    """Worker-group restarts Ray Train allows, -1 for unlimited; each resumes from the
    latest checkpoint."""
    promote: bool = True
    """Make the new version ``champion`` when its test metric passes the gate below; false
    registers it with no alias (``jobs.pipeline``: ``jobs.evaluate`` gates it, a release
    serves it)."""
    min_accuracy: Fraction = 0.97
    """Classifiers: test accuracy at or above which the new version becomes ``champion``."""
    max_loss: PositiveFloat = 2.5
    """Language models: test loss (nats per token) at or below which it becomes ``champion``
    (a byte model guessing uniformly scores ln 256 = 5.55)."""
    log_every: NonNegativeInt = 0
    """Optimizer steps between progress lines in the job log (0: one line per epoch)."""
    distill_temperature: PositiveFloat = 2.0
    """Softmax temperature of the soft targets when distilling from a teacher."""
    distill_alpha: Fraction = 0.7
    """Weight of the soft-target loss when distilling (the rest is cross-entropy)."""
    init_from: str = ""
    """Fine-tune: the registered version (``name@version``, a number: what an alias pointed
    at when the run was made) whose weights the workers start from; empty: fresh weights.
    Set by ``jobs.train --from``, which resolves an alias and checks the architecture."""

    def __post_init__(self) -> None:
        # Runs after pydantic's field checks: the checks across fields. A ValueError here
        # reaches the caller as a ValidationError, as a field's would.
        try:
            architecture(self.architecture)
        except ModelError as err:
            raise ValueError(str(err)) from None
        if self.init_from:
            try:
                ref = ModelRef.parse(self.init_from)
            except ModelError as err:
                raise ValueError(f"init_from: {err}") from None
            if ref.version is None:
                raise ValueError(
                    f"init_from {self.init_from!r}: pin a version number (name@3); "
                    "jobs.train --from resolves an alias to one"
                )
        if self.datacenter:
            Datacenter(region=self.datacenter, zone=f"{self.datacenter}-a")  # label-safe
        if self.offload_optimizer and self.zero_stage < 1:
            raise ValueError(
                "offload_optimizer needs ZeRO >= 1: set zero_stage=1 or more, or "
                "offload_optimizer=false"
            )
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                "offload_params needs ZeRO-3: set zero_stage=3, or offload_params=false"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def placement(self) -> dict[str, str] | None:
        """The ``label_selector`` that keeps the run in its datacenter, or None."""
        if not self.datacenter:
            return None
        return Datacenter(self.datacenter, f"{self.datacenter}-a").label_selector()

    @property
    def task(self) -> str:
        """``classify`` or ``lm``, from the architecture."""
        return architecture(self.architecture).task

    def objective(self) -> tuple[str, str]:
        """The validation metric the loop reports that tuning optimises, and its mode."""
        return ("val_loss", "min") if self.task == LM else ("val_accuracy", "max")

    def champion_gate(self) -> ChampionGate:
        if self.task == LM:
            return ChampionGate("loss", self.max_loss, higher_is_better=False)
        return ChampionGate("accuracy", self.min_accuracy, higher_is_better=True)

    def settable(self) -> dict[str, type]:
        """The fields a ``key=value`` override can set, and their types: the scalars but
        the name and the version a fine-tune starts from (a job's ``--name``, ``--from``)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OWN_FLAGS}
        return {key: type(value) for key, value in values.items() if isinstance(value, SCALARS)}

    def with_overrides(self, pairs: Iterable[str]) -> TrainConfig:
        """This config with ``key=value`` overrides (``--set``), each value validated as
        its field's type ("5" for an int, "true" or "no" for a bool).

        Raises:
            OverrideError: A pair that is not ``key=value``, an unknown key or a bad value;
                its one-line message names the key, the value and what is accepted.
        """
        changes = split_overrides(pairs, self.settable())
        try:
            return replace(self, **changes)
        except ValidationError as err:
            message = one_line(err, lambda loc, value: f"{loc[0]}={value!r}")
            if not err.errors()[0]["loc"]:
                # A check across fields (pydantic runs them once every field is valid)
                # names no field: say which overrides led to it.
                given = ", ".join(f"{key}={value!r}" for key, value in changes.items())
                message = f"{given}: {message}"
            raise OverrideError(message) from None


def digits_cnn() -> TrainConfig:
    """The demo run: the digits CNN on 2 CPU workers with ZeRO-2."""
    return TrainConfig(name="digits_cnn")


def digits_cnn_zero1() -> TrainConfig:
    return replace(digits_cnn(), name="digits_cnn_zero1", zero_stage=1)


def digits_cnn_zero3() -> TrainConfig:
    """Parameters, gradients and optimizer state all partitioned across the workers."""
    return replace(digits_cnn(), name="digits_cnn_zero3", zero_stage=3)


def digits_cnn_offload() -> TrainConfig:
    """ZeRO-3 with optimizer and parameters offloaded to the CPU, 2 micro-batches per step:
    the memory-lean layout for models larger than the accelerators."""
    return replace(
        digits_cnn(),
        name="digits_cnn_offload",
        zero_stage=3,
        offload_optimizer=True,
        offload_params=True,
        grad_accum=2,
    )


def digits_cnn_smoke() -> TrainConfig:
    """A few epochs, for tests of the job's plumbing (no accuracy gate)."""
    return replace(digits_cnn(), name="digits_cnn_smoke", epochs=3, min_accuracy=0.0)


def digits_transformer() -> TrainConfig:
    """The reference transformer classifier (3.2 M parameters) on digits."""
    return replace(
        digits_cnn(),
        name="digits_transformer",
        architecture="digits_transformer",
        lr=1e-3,
        min_accuracy=0.9,  # it reaches ~94 % on digits' 1,167 training rows
    )


def gpt_tiny() -> TrainConfig:
    """The tiny GPT (~0.13 M parameters) on the standard library's sources, 2 CPU workers,
    ZeRO-2: its loss falls from ln 256 = 5.5 to ~1.6 nats per byte in two epochs (measured
    here on the default ingest), well inside its 2.5 gate.
    Needs ``python -m jobs.ingest --dataset python_stdlib`` first."""
    return TrainConfig(
        name="gpt_tiny",
        architecture="gpt",
        model_options={"preset": "tiny", "block_size": 128},
        dataset="python_stdlib",
        register_as="gpt",
        epochs=2,
        batch_size=16,
        lr=3e-3,
        weight_decay=0.01,
        augment=False,
        cache_data=False,
        checkpoint_every=1,
        log_every=20,
    )


def gpt_tiny_zero1() -> TrainConfig:
    return replace(gpt_tiny(), name="gpt_tiny_zero1", zero_stage=1)


def gpt_tiny_zero3() -> TrainConfig:
    return replace(gpt_tiny(), name="gpt_tiny_zero3", zero_stage=3)


def gpt_tiny_offload() -> TrainConfig:
    """ZeRO-3 with optimizer (DeepSpeedCPUAdam) and parameter offload to the CPU."""
    return replace(
        gpt_tiny(),
        name="gpt_tiny_offload",
        zero_stage=3,
        offload_optimizer=True,
        offload_params=True,
        grad_accum=2,
    )


def gpt_125m() -> TrainConfig:
    """GPT-2 small's shape on 8 GPUs (NCCL), ZeRO-2, bf16 where supported."""
    return replace(
        gpt_tiny(),
        name="gpt_125m",
        model_options={"preset": "125m"},
        num_workers=8,
        use_gpu=True,
        batch_size=8,
        lr=6e-4,
        epochs=1,
        log_every=50,
    )


def gpt_1b3() -> TrainConfig:
    """GPT-3 XL's shape: parameters partitioned across 8 GPUs (ZeRO-3), activations
    recomputed in the backward pass."""
    return replace(
        gpt_125m(),
        name="gpt_1b3",
        model_options={"preset": "1.3b", "activation_checkpointing": True},
        zero_stage=3,
        batch_size=4,
        lr=2e-4,
    )


def gpt_6b7() -> TrainConfig:
    """GPT-3 6.7B's shape: ZeRO-3 with optimizer and parameters offloaded to host memory."""
    return replace(
        gpt_1b3(),
        name="gpt_6b7",
        model_options={"preset": "6.7b", "activation_checkpointing": True},
        offload_optimizer=True,
        offload_params=True,
        batch_size=2,
        grad_accum=4,
        lr=1.2e-4,
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    f.__name__: f
    for f in (
        digits_cnn,
        digits_cnn_zero1,
        digits_cnn_zero3,
        digits_cnn_offload,
        digits_cnn_smoke,
        digits_transformer,
        gpt_tiny,
        gpt_tiny_zero1,
        gpt_tiny_zero3,
        gpt_tiny_offload,
        gpt_125m,
        gpt_1b3,
        gpt_6b7,
    )
}


def preset_for(arch: str, options: dict) -> str:
    """The preset a fine-tune of a version built as ``arch(**options)`` takes when no
    ``--config`` is given: the first (in ``PRESETS`` order) with that architecture and those
    options, else the first with that architecture (the version's options replace its own).

    Raises:
        ValueError: No preset trains ``arch`` (an ensemble's graph, say).
    """
    same = presets_of(arch)
    if not same:
        raise ValueError(f"no training preset trains architecture {arch!r}")
    exact = [name for name in same if PRESETS[name]().model_options == options]
    return (exact or same)[0]


def presets_of(arch: str) -> list[str]:
    """The presets that train ``arch``, in ``PRESETS`` order."""
    return [name for name, make in PRESETS.items() if make().architecture == arch]


def preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(
            f"Unknown config {name!r}; presets: {', '.join(sorted(PRESETS))}."
        ) from None
