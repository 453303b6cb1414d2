"""Compress a registered model version into a new one: prune, quantize or distill.

Submit it to the cluster (run from the repository root):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.compress --from digits@champion --method int8_dynamic

Methods: ``prune`` (global magnitude pruning to ``--sparsity``, then a short fine-tune),
``prune_structured`` (drops channels / hidden units so tensors really shrink, keeping
``--keep`` of them, then a fine-tune), ``int8_dynamic`` and ``int8_static`` (ONNX Runtime
quantization; static calibrates on rows from the training shards) and ``distill`` (trains
a smaller ``--student`` with Ray Train on the parent's soft targets). The result is a new
version whose parent is the source; no alias moves (``jobs.evaluate`` gates it). A
comparison row against the parent (size, latency at batch 1 and 32, accuracy delta) is
printed as JSON and logged to the MLflow run.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from torch import nn

from cluster.provenance import git_sha
from cluster.settings import Settings, get_settings
from jobs._private.cli import parse_config
from jobs._private.publish import publish
from jobs._private.runs import mlflow_run
from jobs._private.trainer import fit
from jobs.configs import TrainConfig
from models import compression, package
from models.compression.latency import onnx_latency
from models.dataset import Manifest, dataset_uri, read_manifest
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session
from models.refs import GIT_TAG, ModelVersionInfo
from models.registry import Registry
from models.weights import load_weights
from models.zoo import architecture, build_model

Method = Literal["prune", "prune_structured", "int8_dynamic", "int8_static", "distill"]


class CompressConfig(BaseModel):
    """What to compress, how, and how hard."""

    from_: str = Field(description="Parent version: name@version or name@alias.")
    method: Method = Field(
        description="prune | prune_structured | int8_dynamic | int8_static | distill"
    )
    sparsity: float = Field(0.5, gt=0, lt=1, description="prune: share of weights set to zero.")
    keep: float = Field(0.5, gt=0, lt=1, description="prune_structured: share of units kept.")
    epochs: int = Field(3, ge=0, le=100, description="Fine-tune epochs after pruning.")
    lr: float = Field(5e-4, gt=0, description="Fine-tune learning rate.")
    calibration_rows: int = Field(256, ge=8, description="int8_static: calibration rows.")
    student: str = Field("digits_cnn", description="distill: the student's architecture.")
    student_options: str = Field(
        '{"channels": 16, "hidden": 64}', description="distill: the student's options (JSON)."
    )
    student_epochs: int = Field(15, ge=1, le=1000, description="distill: training epochs.")
    student_lr: float = Field(5e-3, gt=0, description="distill: the student's learning rate.")
    temperature: float = Field(2.0, gt=0, description="distill: softmax temperature.")
    alpha: float = Field(0.7, ge=0, le=1, description="distill: weight of the soft targets.")
    num_workers: int = Field(2, ge=1, description="distill: Ray Train workers.")
    dataset: str = Field("digits", description="Dataset the parent was trained on.")


def load_parent(
    registry: Registry, info: ModelVersionInfo
) -> tuple[nn.Module, package.PackageConfig, Path]:
    folder = registry.fetch(info)
    config = package.PackageConfig.read(folder)
    model = build_model(config.architecture, **config.options)
    return load_weights(model, folder / package.WEIGHTS_FILE), config, folder


def compress(
    cfg: CompressConfig,
    parent: nn.Module,
    pconfig: package.PackageConfig,
    pfolder: Path,
    manifest: Manifest,
    tmp: Path,
) -> tuple[nn.Module, str, dict, Path | None]:
    """The compressed model, its architecture and options, and a ready ONNX file if any."""
    arch, options = pconfig.architecture, pconfig.options
    x, y = manifest.load_split("train")
    augment = architecture(arch).augment
    if cfg.method == "prune":
        model = compression.apply_magnitude_pruning(parent, cfg.sparsity)
        model = compression.fine_tune(model, x, y, epochs=cfg.epochs, lr=cfg.lr, augment=augment)
        return compression.make_pruning_permanent(model), arch, options, None
    if cfg.method == "prune_structured":
        model, options = compression.structured_prune(arch, parent, cfg.keep)
        model = compression.fine_tune(model, x, y, epochs=cfg.epochs, lr=cfg.lr, augment=augment)
        return model, arch, options, None
    onnx_in, onnx_out = pfolder / package.ONNX_FILE, tmp / "quantized.onnx"
    if cfg.method == "int8_dynamic":
        return parent, arch, options, compression.quantize_dynamic_int8(onnx_in, onnx_out)
    rows = x[: cfg.calibration_rows]  # int8_static: calibrate on training rows
    return parent, arch, options, compression.quantize_static_int8(onnx_in, onnx_out, rows)


def distill(
    cfg: CompressConfig,
    teacher: ModelVersionInfo,
    manifest: Manifest,
    settings: Settings,
    run_id: str,
) -> tuple[nn.Module, str, dict]:
    options = json.loads(cfg.student_options)
    train_cfg = TrainConfig(
        name=f"distill-{teacher.name}-v{teacher.version}-{time.strftime('%Y%m%d-%H%M%S')}",
        architecture=cfg.student,
        model_options=options,
        num_workers=cfg.num_workers,
        epochs=cfg.student_epochs,
        lr=cfg.student_lr,
        distill_temperature=cfg.temperature,
        distill_alpha=cfg.alpha,
        min_accuracy=0.0,
    )
    model = fit(train_cfg, manifest, settings, run_id, teacher=teacher)
    return model, cfg.student, options


def compare(parent: Path, child: Path, manifest: Manifest) -> dict:
    """Size, latency (batch 1 and 32) and test accuracy of two ONNX models, side by side."""
    x, y = manifest.load_split("test")
    row = {}
    for side, path in (("before", parent), ("after", child)):
        logits = cpu_session(path, threads=1).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        row[side] = {
            "size_bytes": path.stat().st_size,
            "latency_p50_ms_batch1": onnx_latency(path, 1, threads=1).p50_ms,
            "latency_p50_ms_batch32": onnx_latency(path, 32, threads=1).p50_ms,
            "accuracy": float((logits.argmax(1) == y).mean()),
        }
    p, n = row["before"], row["after"]
    row["size_ratio"] = n["size_bytes"] / p["size_bytes"]
    row["speedup_batch1"] = p["latency_p50_ms_batch1"] / n["latency_p50_ms_batch1"]
    row["speedup_batch32"] = p["latency_p50_ms_batch32"] / n["latency_p50_ms_batch32"]
    row["accuracy_delta"] = n["accuracy"] - p["accuracy"]
    return row


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(CompressConfig, __doc__.split("\n")[0], argv)
    settings = get_settings()
    registry = Registry.from_settings(settings)
    source = registry.resolve(cfg.from_)
    manifest = read_manifest(dataset_uri(settings.storage_root, cfg.dataset))
    run_name = f"{cfg.method}-{source.name}-v{source.version}"
    tags = {GIT_TAG: git_sha(), "aimass.compression": cfg.method}
    with (
        mlflow_run(registry, source.name, run_name, cfg.model_dump(), tags) as run_id,
        tempfile.TemporaryDirectory() as tmp,
    ):
        parent, pconfig, pfolder = load_parent(registry, source)
        print(f"[compress] {cfg.method} of {source.name} version {source.version}", flush=True)
        if cfg.method == "distill":
            model, arch, options = distill(cfg, source, manifest, settings, run_id)
            onnx_file = None
        else:
            model, arch, options, onnx_file = compress(
                cfg, parent, pconfig, pfolder, manifest, Path(tmp)
            )
        knob = {"prune": "sparsity", "prune_structured": "keep"}.get(cfg.method)
        extra = {"compression": cfg.method} | ({knob: getattr(cfg, knob)} if knob else {})
        version, _ = publish(
            model,
            arch,
            options,
            source.name,
            manifest,
            registry,
            run_id,
            tags,
            parent=source,
            onnx_file=onnx_file,
            extra=extra,
        )
        row = compare(
            pfolder / package.ONNX_FILE, registry.fetch(version) / package.ONNX_FILE, manifest
        )
        if cfg.method == "prune":
            row["weight_sparsity"] = compression.weight_sparsity(model)
        row |= {
            "method": cfg.method,
            "parent": f"{source.name}@{source.version}",
            "version": f"{version.name}@{version.version}",
        }
        registry.client.log_dict(run_id, row, "comparison.json")
        for key in ("size_ratio", "speedup_batch1", "speedup_batch32", "accuracy_delta"):
            registry.client.log_metric(run_id, key, row[key])
    print(
        f"[compress] registered {version.name} version {version.version} "
        f"(parent {source.version}); evaluate it: python -m jobs.evaluate "
        f"--model {version.name}@{version.version}",
        flush=True,
    )
    print(f"[compress] comparison {json.dumps(row)}", flush=True)


if __name__ == "__main__":
    main()
