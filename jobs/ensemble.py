"""Make an ensemble of classifier versions, measure it against each member and register it.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.ensemble --members digits@3,digits@5,digits@7 --rule mean

``--rule mean`` averages the members' probabilities (``--weights 2,1,1`` weighs them),
``vote`` takes the majority class, ``stack`` fits a logistic regression on the members'
probabilities of the validation split. The ensemble is one ONNX graph running every member
(``models.ensemble``), registered as a new version of ``--name`` (the members' model by
default) with no alias: it is then gated, released and served like any version
(``jobs.evaluate --model digits@N``, ``jobs.release``). The job prints, and logs to its
MLflow run, the test metrics of the ensemble and of each member.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from pydantic import BaseModel, Field, field_validator

from cluster.provenance import git_sha
from cluster.settings import get_settings
from jobs._private.cli import parse_config
from jobs._private.publish import register_package
from jobs._private.runs import mlflow_run
from models import package
from models.dataset import dataset_uri, read_manifest
from models.ensemble import combine, fit_stack
from models.evaluation import classification_metrics, softmax
from models.exceptions import ModelError, ModelNotFound
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session
from models.refs import DATA_TAG, GIT_TAG
from models.registry import Registry
from models.signature import CLASSIFY
from models.zoo import architecture

ENSEMBLE = "ensemble"


class EnsembleConfig(BaseModel):
    members: str = Field(description="Member versions, comma-separated: digits@3,digits@5.")
    rule: Literal["mean", "vote", "stack"] = Field("mean", description="How answers combine.")
    weights: str | None = Field(None, description="mean: one weight per member, e.g. 2,1,1.")
    name: str | None = Field(None, description="Register as (default: the members' model).")
    dataset: str = Field("digits", description="Dataset to measure (and stack) on.")

    @field_validator("members")
    @classmethod
    def _two_or_more(cls, members: str) -> str:
        if len([m for m in members.split(",") if m.strip()]) < 2:
            raise ValueError("an ensemble needs at least 2 members")
        return members

    @property
    def refs(self) -> list[str]:
        return [m.strip() for m in self.members.split(",") if m.strip()]

    @property
    def weight_list(self) -> list[float] | None:
        return [float(w) for w in self.weights.split(",")] if self.weights else None


def _probabilities(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    return softmax(cpu_session(onnx_path, threads=1).run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(EnsembleConfig, __doc__.split("\n")[0], argv)
    settings = get_settings()
    registry = Registry.from_settings(settings)
    try:
        infos = [registry.resolve(ref) for ref in cfg.refs]
    except ModelNotFound as err:
        sys.exit(f"[ensemble] {err}")
    folders = [registry.fetch(info) for info in infos]
    configs = [package.PackageConfig.read(f) for f in folders]
    signatures = {(tuple(c.signature.input_shape), c.signature.num_classes) for c in configs}
    if any(architecture(c.architecture).task != CLASSIFY for c in configs) or len(signatures) > 1:
        sys.exit("[ensemble] members must be classifiers with one signature (input, classes)")
    manifest = read_manifest(dataset_uri(settings.storage_root, cfg.dataset))
    x_test, y_test = manifest.load_split("test")
    onnx_files = [f / package.ONNX_FILE for f in folders]
    names = [f"{i.name}@{i.version}" for i in infos]
    members = {
        n: classification_metrics(y_test, _probabilities(p, x_test))
        for n, p in zip(names, onnx_files, strict=True)
    }
    stack = None
    if cfg.rule == "stack":
        x_val, y_val = manifest.load_split("val")
        stack = fit_stack([_probabilities(p, x_val) for p in onnx_files], y_val)
    signature = configs[0].signature
    try:
        graph = combine(
            [onnx.load(p) for p in onnx_files],
            cfg.rule,
            signature.num_classes,
            cfg.weight_list,
            stack,
        )
    except ValueError as err:
        sys.exit(f"[ensemble] {err}")
    name = cfg.name or infos[0].name
    options = {
        "members": names,
        "rule": cfg.rule,
        "weights": cfg.weight_list,
        "input_shape": list(signature.input_shape),
        "num_classes": signature.num_classes,
    }
    tags = {GIT_TAG: git_sha(), DATA_TAG: manifest.sha256, "aimass.members": ",".join(names)}
    run_name = f"ensemble-{cfg.rule}-" + "-".join(n.replace("@", "v") for n in names)
    with (
        mlflow_run(registry, name, run_name, cfg.model_dump(), tags) as run_id,
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp) / "model"
        folder.mkdir()
        onnx.save(graph, folder / package.ONNX_FILE)
        metrics = classification_metrics(y_test, _probabilities(folder / package.ONNX_FILE, x_test))
        package.PackageConfig(ENSEMBLE, signature, options, metrics, {ENSEMBLE: cfg.rule}).write(
            folder
        )
        (Path(tmp) / "members.json").write_text(json.dumps(members, indent=2))
        registry.client.log_artifact(run_id, str(Path(tmp) / "members.json"))
        for member, m in members.items():
            registry.client.log_metric(
                run_id, f"member_{member.replace('@', '_v')}_accuracy", m["accuracy"]
            )
        try:
            version = register_package(registry, name, run_id, folder, metrics, tags)
        except ModelError as err:
            sys.exit(f"[ensemble] {err}")
    print(f"[ensemble] {cfg.rule} of {', '.join(names)}: test accuracy")
    for member, m in members.items():
        print(f"[ensemble]   {member:>16}  {m['accuracy']:.4f}")
    best = max(m["accuracy"] for m in members.values())
    print(
        f"[ensemble]   {'ensemble':>16}  {metrics['accuracy']:.4f} "
        f"({metrics['accuracy'] - best:+.4f} vs the best member)"
    )
    print(f"[ensemble] registered {name} version {version.version} (no alias: evaluate it next)")


if __name__ == "__main__":
    main()
