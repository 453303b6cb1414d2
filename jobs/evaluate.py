"""Evaluate a registered model version and gate it: pass, and it becomes the ``candidate``.

Submit it to the cluster (run from the repository root):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.evaluate --model digits@3

Metrics come from the held-out split, computed from the ONNX model that would serve. For
classifiers (scikit-learn): accuracy, precision/recall/F1 (macro and weighted), one-vs-rest
ROC-AUC, Cohen's kappa, expected calibration error, a confusion matrix (PNG in the MLflow
run) and ONNX Runtime latency. For language models: next-token loss (nats per token) and
perplexity (``--dataset python_stdlib`` is their default). Gates compare it with the
current champion, re-measured on the same split. A failing gate ends the job with status 1
and says which gate, and by how much.

``--data-source shard_store`` reads the split through a ShardStore group of its own (named
``evaluate-<model>-v<version>``, ``--shard-replicas`` per shard), as training does with
``--set data_source=shard_store``, instead of from storage in this process.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, PositiveInt

from actors import shard_store
from cluster.settings import get_settings
from jobs._private.cli import parse_config
from jobs._private.publish import LM_TEST_ROWS, lm_test_metrics
from jobs._private.runs import mlflow_run
from models import package
from models.compression.latency import onnx_latency
from models.dataset import FEATURES, LABEL, TOKENS, Manifest, dataset_uri, read_manifest
from models.evaluation import (
    classification_metrics,
    confusion,
    confusion_png,
    expected_calibration_error,
    softmax,
)
from models.exceptions import ModelNotFound
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session
from models.refs import CANDIDATE, CHAMPION, ModelRef, ModelVersionInfo
from models.registry import Registry
from models.signature import LM
from models.zoo import architecture


class EvaluateConfig(BaseModel):
    """Which version to evaluate, on what, and the gates it must pass."""

    model: str = Field(description="Version to evaluate: name@version or name@alias.")
    dataset: str | None = Field(
        None,
        description="Dataset (under <storage>/datasets); default digits, or python_stdlib "
        "for language models.",
    )
    split: str = Field("test", pattern="^(val|test)$", description="Held-out split.")
    data_source: Literal["storage", "shard_store"] = Field(
        "storage",
        description="Where the split is read: storage (its Parquet shards, in this process) "
        "or shard_store (a ShardStore group started for the job, read via its replicas).",
    )
    shard_replicas: PositiveInt = Field(
        1, description="shard_store: replicas per shard (1: a lost one is read again)."
    )
    max_accuracy_drop: float = Field(
        0.005, ge=0, le=1, description="Largest accuracy drop vs the champion (0.005 = 0.5 pt)."
    )
    min_accuracy: float = Field(0.0, ge=0, le=1, description="Absolute accuracy floor.")
    max_p99_latency_ms: float = Field(
        50.0, gt=0, description="p99 budget at batch 1, ONNX Runtime on one thread."
    )
    max_loss: float = Field(10.0, gt=0, description="Language models: test loss ceiling.")
    max_loss_increase: float = Field(
        0.02, ge=0, description="Language models: largest loss increase vs the champion."
    )
    promote: bool = Field(True, description="Set the candidate alias when every gate passes.")


@dataclass(frozen=True, slots=True)
class Gate:
    name: str
    value: float
    limit: float
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def describe(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        verdict = "passed" if self.passed else f"FAILED by {abs(self.value - self.limit):.4g}"
        return f"{self.name}: {self.value:.4g} {op} {self.limit:.4g} {verdict}"


def measure(folder: Path, x, y) -> tuple[dict[str, float], list[list[int]]]:
    """Quality and latency of the package in ``folder`` on rows ``x`` with labels ``y``."""
    onnx = folder / package.ONNX_FILE
    proba = softmax(cpu_session(onnx, threads=1).run([OUTPUT_NAME], {INPUT_NAME: x})[0])
    metrics = classification_metrics(y, proba)
    metrics["calibration_error"] = expected_calibration_error(y, proba)
    one, many = onnx_latency(onnx, 1, threads=1), onnx_latency(onnx, 32, threads=1)
    metrics |= {
        "latency_p50_ms_batch1": one.p50_ms,
        "latency_p99_ms_batch1": one.p99_ms,
        "latency_p50_ms_batch32": many.p50_ms,
        "rows_per_s_batch32": many.rows_per_s,
    }
    return metrics, confusion(y, proba.argmax(1), proba.shape[1])


def gates(cfg: EvaluateConfig, metrics: dict[str, float], champion_accuracy: float | None):
    out = [
        Gate("accuracy", metrics["accuracy"], cfg.min_accuracy, True),
        Gate(
            "p99 latency ms (batch 1)",
            metrics["latency_p99_ms_batch1"],
            cfg.max_p99_latency_ms,
            False,
        ),
    ]
    if champion_accuracy is not None:
        floor = champion_accuracy - cfg.max_accuracy_drop
        out.append(Gate("accuracy vs champion", metrics["accuracy"], floor, True))
    return out


def lm_gates(cfg: EvaluateConfig, metrics: dict[str, float], champion_loss: float | None):
    out = [Gate("loss", metrics["loss"], cfg.max_loss, False)]
    if champion_loss is not None:
        ceiling = champion_loss + cfg.max_loss_increase
        out.append(Gate("loss vs champion", metrics["loss"], ceiling, False))
    return out


def champion_score(
    registry: Registry, info: ModelVersionInfo, score: Callable[[Path], float]
) -> float | None:
    """``score`` of the current champion's package; None if there is no champion, or it is
    the version under evaluation."""
    try:
        champion = registry.resolve(ModelRef(info.name, alias=CHAMPION))
    except ModelNotFound:
        return None
    if champion.version == info.version:
        return None
    return score(registry.fetch(champion))


def _accuracy(x, y) -> Callable[[Path], float]:
    def score(folder: Path) -> float:
        session = cpu_session(folder / package.ONNX_FILE, threads=1)
        return float((session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].argmax(1) == y).mean())

    return score


def _lm_loss(tokens) -> Callable[[Path], float]:
    def score(folder: Path) -> float:
        return lm_test_metrics(cpu_session(folder / package.ONNX_FILE, threads=1), tokens)["loss"]

    return score


def read_through_shard_store(
    manifest: Manifest, split: str, group: str, factor: int
) -> dict[str, np.ndarray]:
    """``split``'s columns in manifest order, read through a ShardStore group started for
    the read (and stopped after it)."""
    with shard_store.running(manifest, group=group, splits=(split,), factor=factor) as name:
        reader = shard_store.ShardReader(name)
        parts = [reader.get(spec.shard_id) for spec in reader.specs(split)]
        # concatenate copies out of the replicas' objects before the group ends
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def held_out(cfg: EvaluateConfig, manifest: Manifest, lm: bool, group: str):
    """The split as ``Manifest.load_split`` (x, y) or ``load_tokens`` (lm) gives it, from
    ``cfg.data_source``."""
    if cfg.data_source == "storage":
        return manifest.load_tokens(cfg.split) if lm else manifest.load_split(cfg.split)
    columns = read_through_shard_store(manifest, cfg.split, group, cfg.shard_replicas)
    if lm:
        return columns[TOKENS].astype(np.int64)
    x = columns[FEATURES].astype(np.float32).reshape(-1, *manifest.feature_shape)
    return x, columns[LABEL].astype(np.int64)


def evaluate_classifier(cfg, registry, info, folder, data, run_id) -> list[Gate]:
    x, y = data
    metrics, matrix = measure(folder, x, y)
    for key, value in metrics.items():
        registry.client.log_metric(run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "confusion_matrix.png"
        confusion_png(matrix, png, f"{info.name} v{info.version} ({cfg.split})")
        registry.client.log_artifact(run_id, str(png))
    print(f"[evaluate] {info.name} version {info.version} on {cfg.split} ({len(y)} rows):")
    for key in (
        "accuracy",
        "f1_macro",
        "roc_auc_ovr",
        "cohen_kappa",
        "calibration_error",
        "latency_p99_ms_batch1",
        "rows_per_s_batch32",
    ):
        print(f"[evaluate]   {key:24s} {metrics[key]:.4f}")
    return gates(cfg, metrics, champion_score(registry, info, _accuracy(x, y)))


def evaluate_language_model(cfg, registry, info, folder, data, run_id) -> list[Gate]:
    tokens = data[:LM_TEST_ROWS]
    metrics = lm_test_metrics(cpu_session(folder / package.ONNX_FILE, threads=1), tokens)
    for key, value in metrics.items():
        registry.client.log_metric(run_id, key, value)
    print(
        f"[evaluate] {info.name} version {info.version} on {cfg.split} "
        f"({len(tokens)} sequences, {metrics['tokens']:.0f} tokens):"
    )
    for key in ("loss", "perplexity"):
        print(f"[evaluate]   {key:24s} {metrics[key]:.4f}")
    return lm_gates(cfg, metrics, champion_score(registry, info, _lm_loss(tokens)))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(EvaluateConfig, __doc__.split("\n")[0], argv)
    settings = get_settings()
    registry = Registry.from_settings(settings)
    info = registry.resolve(cfg.model)
    folder = registry.fetch(info)
    lm = architecture(package.PackageConfig.read(folder).architecture).task == LM
    dataset = cfg.dataset or ("python_stdlib" if lm else "digits")
    manifest = read_manifest(dataset_uri(settings.storage_root, dataset))
    run_name = f"evaluate-{info.name}-v{info.version}"
    data = held_out(cfg, manifest, lm, group=run_name)
    tags = {"aimass.evaluated": f"{info.name}@{info.version}"}
    with mlflow_run(registry, info.name, run_name, cfg.model_dump(), tags) as run_id:
        evaluate = evaluate_language_model if lm else evaluate_classifier
        results = evaluate(cfg, registry, info, folder, data, run_id)
    for gate in results:
        print(f"[evaluate] gate {gate.describe()}")
    if not all(g.passed for g in results):
        sys.exit(f"[evaluate] {info.name} version {info.version} failed its gates; no alias moved")
    if cfg.promote:
        reason = "evaluate: " + "; ".join(g.describe() for g in results)
        registry.set_alias(info.name, CANDIDATE, info.version, reason=reason)
        print(f"[evaluate] alias candidate -> {info.name} version {info.version}")


if __name__ == "__main__":
    main()
