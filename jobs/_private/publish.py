"""From a finished training run to a registered model version (and maybe the champion).

The version's metrics are measured on the held-out test split with ONNX Runtime, i.e.
on exactly what will serve, after checking that ONNX agrees with torch.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from jobs.configs import TrainConfig
from jobs.dataset import Manifest
from models import package
from models.evaluation import classification_metrics, confusion, softmax
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, check_parity, cpu_session, export_onnx
from models.registry import CHAMPION, ModelVersionInfo, Registry
from models.weights import load_weights, save_weights
from models.zoo import architecture, build_model

DATA_TAG = "aimass.data_manifest_sha256"
GIT_TAG = "aimass.git_sha"


@dataclass(frozen=True, slots=True)
class Published:
    version: ModelVersionInfo
    metrics: dict[str, float]
    champion: bool
    gate_message: str


def build_package(cfg: TrainConfig, weights: Path, manifest: Manifest, folder: Path) -> dict:
    """Write the package into ``folder``; return the test metrics measured with ONNX Runtime."""
    model = load_weights(build_model(cfg.architecture, **cfg.model_options), weights).eval()
    x_test, y_test = manifest.load_split("test")
    save_weights(model, folder / package.WEIGHTS_FILE)
    export_onnx(model, torch.from_numpy(x_test[:2]), folder / package.ONNX_FILE)
    parity = check_parity(model, folder / package.ONNX_FILE, torch.from_numpy(x_test))
    logits = cpu_session(folder / package.ONNX_FILE).run([OUTPUT_NAME], {INPUT_NAME: x_test})[0]
    proba = softmax(logits)
    metrics = classification_metrics(y_test, proba) | {"onnx_parity_max_abs_diff": parity}
    package.PackageConfig(
        architecture=cfg.architecture,
        signature=architecture(cfg.architecture).signature,
        options=cfg.model_options,
        metrics=metrics,
    ).write(folder)
    matrix = confusion(y_test, proba.argmax(1), manifest.num_classes)
    (folder.parent / "confusion_matrix.json").write_text(json.dumps(matrix))
    return metrics


def publish(
    cfg: TrainConfig,
    weights: Path,
    manifest: Manifest,
    registry: Registry,
    run_id: str,
    git_sha: str,
) -> Published:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        metrics = build_package(cfg, weights, manifest, folder)
        registry.client.log_artifact(run_id, str(Path(tmp) / "confusion_matrix.json"))
        for key, value in metrics.items():
            registry.client.log_metric(run_id, f"test_{key}", value)
        version = registry.register(
            cfg.register_as,
            run_id,
            folder,
            tags={DATA_TAG: manifest.sha256, GIT_TAG: git_sha, "aimass.run_name": cfg.name},
        )
    accuracy = metrics["accuracy"]
    if accuracy >= cfg.min_accuracy:
        registry.set_alias(cfg.register_as, CHAMPION, version.version)
        message = f"gate passed: test accuracy {accuracy:.4f} >= {cfg.min_accuracy}"
    else:
        message = (
            f"gate failed: test accuracy {accuracy:.4f} < {cfg.min_accuracy} "
            f"(short by {cfg.min_accuracy - accuracy:.4f}); version kept without an alias"
        )
    return Published(version, metrics, accuracy >= cfg.min_accuracy, message)
