"""From a model to a registered version: package, measure, register, gate.

A version's metrics are measured on the held-out test split with ONNX Runtime, i.e. on
exactly what will serve. Shared by training, compression and distillation.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jobs.configs import ChampionGate
from models import package
from models.dataset import Manifest
from models.drift import INPUT_PROFILE
from models.evaluation import (
    classification_metrics,
    confusion,
    language_model_metrics,
    next_token_nats,
    softmax,
)
from models.gpt import LogitsOnly
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, check_parity, cpu_session, export_onnx
from models.refs import CHAMPION, DATA_TAG, ModelVersionInfo
from models.registry import Registry
from models.signature import LM
from models.weights import save_weights
from models.zoo import architecture

LM_TEST_ROWS = 512
"""Test sequences a language model's published loss is measured on: the split's first rows,
a uniform sample since ingest shuffles them (ONNX Runtime on CPU, under a second for the
tiny presets). gpt_tiny's 512-row samples of its 6,482-row test split spread by 0.022-0.024
nats (one standard deviation, two trained models) around the whole split's loss."""


def lm_test_metrics(session, tokens: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    """Loss and perplexity of an ONNX language model on (N, T + 1) token rows.

    Summed batch by batch, as the training loop's validation sums its batches: the same
    metric functions, so test and validation loss differ only by the rows they see.
    """
    nats = count = 0
    for i in range(0, len(tokens), batch_size):
        rows = tokens[i : i + batch_size]
        logits = session.run([OUTPUT_NAME], {INPUT_NAME: rows[:, :-1]})[0]
        batch_nats, batch_count = next_token_nats(logits, rows[:, 1:])
        nats, count = nats + batch_nats, count + batch_count
    return language_model_metrics(nats, count)


def _write_lm_package(model: nn.Module, manifest: Manifest, folder: Path) -> dict[str, float]:
    tokens = manifest.load_tokens("test")[:LM_TEST_ROWS]
    graph = LogitsOnly(model).eval()
    example = torch.from_numpy(tokens[:2, :-1])
    export_onnx(graph, example, folder / package.ONNX_FILE, dynamic_sequence=True)
    parity = check_parity(graph, folder / package.ONNX_FILE, example)
    metrics = lm_test_metrics(cpu_session(folder / package.ONNX_FILE), tokens)
    return metrics | {"onnx_parity_max_abs_diff": parity}


def write_package(
    model: nn.Module,
    arch: str,
    options: dict,
    manifest: Manifest,
    folder: Path,
    onnx_file: Path | None = None,
    extra: dict | None = None,
) -> dict[str, float]:
    """Write a package into ``folder``; return its test metrics, measured with ONNX Runtime.

    Args:
        model: The torch model (its weights go to safetensors).
        arch: Architecture name in the zoo; ``options`` rebuild it.
        onnx_file: A ready ONNX model to serve instead of exporting ``model`` (a quantized
            one, say); no torch parity check applies to it then.
        extra: Further facts for config.json (e.g. the compression method).
    """
    model = model.eval()
    save_weights(model, folder / package.WEIGHTS_FILE)
    if architecture(arch).task == LM:
        metrics = _write_lm_package(model, manifest, folder)
        _write_config(arch, options, metrics, extra, folder)
        return metrics
    x_test, y_test = manifest.load_split("test")
    metrics: dict[str, float] = {}
    if onnx_file is None:
        export_onnx(model, torch.from_numpy(x_test[:2]), folder / package.ONNX_FILE)
        parity = check_parity(model, folder / package.ONNX_FILE, torch.from_numpy(x_test))
        metrics["onnx_parity_max_abs_diff"] = parity
    else:
        (folder / package.ONNX_FILE).write_bytes(onnx_file.read_bytes())
    logits = cpu_session(folder / package.ONNX_FILE).run([OUTPUT_NAME], {INPUT_NAME: x_test})[0]
    proba = softmax(logits)
    metrics = classification_metrics(y_test, proba) | metrics
    profile = manifest.input_profile  # what the replicas measure served inputs' drift against
    if profile is not None:
        extra = {**(extra or {}), INPUT_PROFILE: profile.to_dict()}
    _write_config(arch, options, metrics, extra, folder)
    matrix = confusion(y_test, proba.argmax(1), manifest.num_classes)
    (folder.parent / "confusion_matrix.json").write_text(json.dumps(matrix))
    return metrics


def _write_config(arch: str, options: dict, metrics: dict, extra: dict | None, folder: Path):
    package.PackageConfig(
        architecture=arch,
        signature=architecture(arch).signature_for(options),
        options=options,
        metrics=metrics,
        extra=extra or {},
    ).write(folder)


def register_package(
    registry: Registry,
    name: str,
    run_id: str,
    folder: Path,
    metrics: dict[str, float],
    tags: dict[str, str],
    parent: ModelVersionInfo | None = None,
) -> ModelVersionInfo:
    """Log the package's metrics and confusion matrix to the run; register it."""
    confusion_file = folder.parent / "confusion_matrix.json"
    if confusion_file.exists():
        registry.client.log_artifact(run_id, str(confusion_file))
    for key, value in metrics.items():
        registry.client.log_metric(run_id, f"test_{key}", value)
    return registry.register(name, run_id, folder, tags=tags, parent=parent)


def publish(
    model: nn.Module,
    arch: str,
    options: dict,
    register_as: str,
    manifest: Manifest,
    registry: Registry,
    run_id: str,
    tags: dict[str, str],
    parent: ModelVersionInfo | None = None,
    onnx_file: Path | None = None,
    extra: dict | None = None,
) -> tuple[ModelVersionInfo, dict[str, float]]:
    """Package ``model``, measure it and register it as a new version (no alias moves)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        metrics = write_package(model, arch, options, manifest, folder, onnx_file, extra)
        tags = {DATA_TAG: manifest.sha256, **tags}
        version = register_package(registry, register_as, run_id, folder, metrics, tags, parent)
    return version, metrics


def gate_champion(
    registry: Registry, version: ModelVersionInfo, metrics: dict[str, float], gate: ChampionGate
) -> tuple[bool, str]:
    """Make ``version`` the champion when its test metric passes ``gate``."""
    value = metrics[gate.metric]
    cmp = ">=" if gate.higher_is_better else "<="
    if gate.passes(value):
        reason = f"train gate: test {gate.metric} {value:.4f} {cmp} {gate.threshold}"
        registry.set_alias(version.name, CHAMPION, version.version, reason=reason)
        return True, f"gate passed: test {gate.metric} {value:.4f} {cmp} {gate.threshold}"
    return False, (
        f"gate failed: test {gate.metric} {value:.4f} not {cmp} {gate.threshold} "
        f"(off by {abs(value - gate.threshold):.4f}); version kept without an alias"
    )
