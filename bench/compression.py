"""Compression benchmark: int8 and pruned versions of the reference transformer vs fp32.

    .venv/bin/python -m bench.compression            # about 6-8 minutes on 2 cores
    .venv/bin/python -m bench.compression --epochs 5 --iters 50   # a quick smoke run

It trains the reference model (``digits_transformer``, 3.2 M parameters) on digits in
process, exports it to ONNX (fp32: the baseline of every row), then prints one JSON line
per row (the PERFORMANCE.md contract) and writes them all to
``bench/results/compression.jsonl``. Rows and their ``ratio``:

- ``int8_dynamic``, ``int8_static``: fp32 p50 / int8 p50 latency at batch 32, both in ONNX
  Runtime. Goal: >= 1.5 with <= 1 point of test accuracy lost.
- ``onnxruntime_vs_torch``: torch eager p50 / ONNX Runtime p50 at batch 1, same fp32
  weights. Goal: >= 1.5.
- ``prune_magnitude_<sparsity>``: global L1 unstructured pruning, then a short fine-tune;
  pruned / fp32 test accuracy. Goal: >= 0.99. Its batch-32 latency is reported too, and
  should sit near fp32's: a dense runtime multiplies the zeros like any other weight.
- ``prune_structured_<keep>``: each block's MLP cut to the ``keep`` share of its hidden
  units, then a short fine-tune; fp32 p50 / pruned p50 at batch 32. Goal: >= 1.5 with <= 1
  point of test accuracy lost.

Accuracies are on the test split, computed with ONNX Runtime from the exported files. Both
sides of a latency ratio run with the same thread count (``--threads``), back to back.
The whole measurement is one Ray task (2 CPUs) on the embedded local cluster: a private
one (temp home, free ports) started and stopped here, or with ``--existing`` the running
cluster of the current ``AIMASS_*`` settings.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import ray
import torch

from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results
from jobs.ingest import IngestConfig, ingest
from models import compression
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, check_parity, cpu_session, export_onnx
from models.zoo import architecture, build_model

NAME = "compression"
ARCH = "digits_transformer"
LATENCY_GOAL = 1.5
MAX_ACCURACY_LOSS_PT = 1.0


@dataclass(kw_only=True, frozen=True, slots=True)
class BenchConfig:
    """What to train, compress and measure."""

    epochs: int = 30
    """Training epochs of the reference model."""
    lr: float = 1e-3
    fine_tune_epochs: int = 6
    fine_tune_lr: float = 3e-4
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)
    keeps: tuple[float, ...] = (0.75, 0.5, 0.25)
    calibration_rows: int = 256
    threads: int = 1
    """Intra-op threads of torch and ONNX Runtime in every latency measurement."""
    iters: int = 200
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data(storage_root: Path) -> Data:
    manifest = ingest(IngestConfig(), str(storage_root))
    return Data(*manifest.load_split("train"), *manifest.load_split("test"))


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    logits = cpu_session(path).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    return float((logits.argmax(1) == y).mean())


def export(model: torch.nn.Module, path: Path, data: Data) -> Path:
    export_onnx(model, torch.from_numpy(data.x_test[:2]), path)
    check_parity(model, path, torch.from_numpy(data.x_test))
    return path


def onnx_side(method: str, path: Path, data: Data, cfg: BenchConfig, batch: int, **extra) -> dict:
    """One side of a row: test accuracy, latency at ``batch`` and size of an ONNX file."""
    raw = path.read_bytes()
    return {
        "method": method,
        "accuracy": onnx_accuracy(path, data.x_test, data.y_test),
        "latency": compression.onnx_latency(
            path, batch, threads=cfg.threads, iters=cfg.iters
        ).to_dict(),
        "size_bytes": len(raw),
        # Unstructured zeros do not shrink the file, but they do compress.
        "gzip_bytes": len(gzip.compress(raw)),
        **extra,
    }


def row(name: str, ratio: float, goal: str, met: bool, base: dict, cand: dict, **extra) -> dict:
    return {
        "name": f"{NAME}.{name}",
        "ratio": round(ratio, 3),
        "goal": goal,
        "goal_met": bool(met),
        "baseline": base,
        "candidate": cand,
        "accuracy_delta_pt": round(100 * (cand["accuracy"] - base["accuracy"]), 2),
        **extra,
    }


def latency_row(name: str, base: dict, cand: dict) -> dict:
    ratio = base["latency"]["p50_ms"] / cand["latency"]["p50_ms"]
    loss = 100 * (base["accuracy"] - cand["accuracy"])
    goal = f">= {LATENCY_GOAL} with <= {MAX_ACCURACY_LOSS_PT:g} pt accuracy loss"
    met = ratio >= LATENCY_GOAL and loss <= MAX_ACCURACY_LOSS_PT
    return row(name, ratio, goal, met, base, cand, ratio_of="fp32 p50 / candidate p50, batch 32")


def quantization_rows(fp32: Path, data: Data, cfg: BenchConfig, folder: Path) -> list[dict]:
    rng = np.random.default_rng(cfg.seed)
    calibration = data.x_train[rng.permutation(len(data.x_train))[: cfg.calibration_rows]]
    variants = {
        "int8_dynamic": lambda dst: compression.quantize_dynamic_int8(fp32, dst),
        "int8_static": lambda dst: compression.quantize_static_int8(fp32, dst, calibration),
    }
    rows = []
    for method, quantize in variants.items():
        log(f"{method}: quantizing and measuring")
        path = quantize(folder / f"{method}.onnx")
        base = onnx_side("fp32", fp32, data, cfg, 32)
        rows.append(latency_row(method, base, onnx_side(method, path, data, cfg, 32)))
    return rows


def runtime_row(model: torch.nn.Module, fp32: Path, data: Data, cfg: BenchConfig) -> dict:
    log("onnxruntime vs torch eager at batch 1")
    eager = compression.torch_latency(model, 1, threads=cfg.threads, iters=cfg.iters).to_dict()
    onnx = compression.onnx_latency(fp32, 1, threads=cfg.threads, iters=cfg.iters).to_dict()
    ratio = eager["p50_ms"] / onnx["p50_ms"]
    return {
        "name": f"{NAME}.onnxruntime_vs_torch",
        "ratio": round(ratio, 3),
        "goal": f">= {LATENCY_GOAL}",
        "goal_met": ratio >= LATENCY_GOAL,
        "baseline": {"method": f"torch {torch.__version__} eager", "latency": eager},
        "candidate": {"method": f"onnxruntime {ort.__version__}", "latency": onnx},
        "ratio_of": "torch p50 / onnxruntime p50, batch 1, fp32",
    }


def fit(
    model: torch.nn.Module, data: Data, cfg: BenchConfig, *, epochs: int, lr: float
) -> torch.nn.Module:
    """Train or fine-tune on the train split, batch 32, with the shared recipe."""
    return compression.fine_tune(
        model,
        data.x_train,
        data.y_train,
        epochs=epochs,
        lr=lr,
        batch_size=32,
        seed=cfg.seed,
        augment=architecture(ARCH).augment,
    )


def torch_accuracy(model: torch.nn.Module, data: Data) -> float:
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(data.x_test))
    return float((logits.argmax(1).numpy() == data.y_test).mean())


def magnitude_rows(
    model: torch.nn.Module, fp32: Path, data: Data, cfg: BenchConfig, folder: Path
) -> list[dict]:
    rows = []
    for sparsity in cfg.sparsities:
        log(f"magnitude pruning to sparsity {sparsity}, fine-tune, measure")
        pruned = compression.apply_magnitude_pruning(copy.deepcopy(model), sparsity)
        before = torch_accuracy(pruned, data)
        pruned = compression.make_pruning_permanent(
            fit(pruned, data, cfg, epochs=cfg.fine_tune_epochs, lr=cfg.fine_tune_lr)
        )
        path = export(pruned, folder / f"magnitude_{sparsity}.onnx", data)
        base = onnx_side("fp32", fp32, data, cfg, 32)
        cand = onnx_side(
            f"magnitude pruning {sparsity:.0%} + fine-tune",
            path,
            data,
            cfg,
            32,
            weight_sparsity=round(compression.weight_sparsity(pruned), 4),
            accuracy_before_fine_tune=before,
        )
        ratio = cand["accuracy"] / base["accuracy"]
        latency = base["latency"]["p50_ms"] / cand["latency"]["p50_ms"]
        rows.append(
            row(
                f"prune_magnitude_{sparsity:g}",
                ratio,
                ">= 0.99",
                ratio >= 0.99,
                base,
                cand,
                ratio_of="pruned / fp32 test accuracy",
                latency_ratio=round(latency, 3),
            )
        )
    return rows


def structured_rows(
    model: torch.nn.Module, fp32: Path, data: Data, cfg: BenchConfig, folder: Path
) -> list[dict]:
    rows = []
    params = sum(p.numel() for p in model.parameters())
    for keep in cfg.keeps:
        log(f"structured pruning, keep {keep}, fine-tune, measure")
        small, options = compression.structured_prune(ARCH, model, keep)
        before = torch_accuracy(small, data)
        small = fit(small, data, cfg, epochs=cfg.fine_tune_epochs, lr=cfg.fine_tune_lr)
        path = export(small, folder / f"structured_{keep}.onnx", data)
        base = onnx_side("fp32", fp32, data, cfg, 32, parameters=params)
        cand = onnx_side(
            f"structured pruning, keep {keep:.0%} of MLP units + fine-tune",
            path,
            data,
            cfg,
            32,
            parameters=sum(p.numel() for p in small.parameters()),
            options=options,
            accuracy_before_fine_tune=before,
        )
        rows.append(latency_row(f"prune_structured_{keep:g}", base, cand))
    return rows


def train_reference(data: Data, cfg: BenchConfig) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(cfg.seed)
    t0 = time.monotonic()
    model = fit(build_model(ARCH), data, cfg, epochs=cfg.epochs, lr=cfg.lr)
    return model, time.monotonic() - t0


def measure(cfg: BenchConfig) -> list[dict]:
    """Train, compress and measure; the rows, without ``machine`` (added by the caller)."""
    torch.set_num_threads(2)  # training uses the task's 2 CPUs; latency uses cfg.threads
    with tempfile.TemporaryDirectory(prefix="aimass-bench-compression-") as tmp:
        folder = Path(tmp)
        data = load_data(folder / "storage")
        log(f"training {ARCH} for {cfg.epochs} epochs on {len(data.y_train)} rows")
        model, train_s = train_reference(data, cfg)
        fp32 = export(model, folder / "fp32.onnx", data)
        reference = {
            "architecture": ARCH,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_epochs": cfg.epochs,
            "train_s": round(train_s, 1),
            "test_accuracy": onnx_accuracy(fp32, data.x_test, data.y_test),
        }
        log(f"reference: {reference}")
        rows = [
            *quantization_rows(fp32, data, cfg, folder),
            runtime_row(model, fp32, data, cfg),
            *magnitude_rows(model, fp32, data, cfg, folder),
            *structured_rows(model, fp32, data, cfg, folder),
        ]
    machine = machine_info()
    extra = {"threads": cfg.threads, "reference": reference, "config": asdict(cfg)}
    return [r | extra | {"machine": machine} for r in rows]


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, bool]:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
    parser.add_argument("--fine-tune-epochs", type=int, default=defaults.fine_tune_epochs)
    parser.add_argument("--threads", type=int, default=defaults.threads, choices=(1, 2))
    parser.add_argument("--iters", type=int, default=defaults.iters, help="timed calls per side")
    parser.add_argument("--existing", action="store_true", help="use the running cluster")
    args = parser.parse_args(argv)
    if min(args.epochs, args.fine_tune_epochs, args.iters) < 1:
        parser.error("--epochs, --fine-tune-epochs and --iters must be >= 1")
    cfg = BenchConfig(
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        threads=args.threads,
        iters=args.iters,
    )
    return cfg, args.existing


def main(argv: list[str] | None = None) -> None:
    cfg, existing = parse_args(argv)
    with cluster(existing) as settings:
        ray.init(address=settings.gcs_address, logging_level="ERROR")
        try:
            task = ray.remote(num_cpus=2)(measure)
            rows = ray.get(task.remote(cfg))
        finally:
            ray.shutdown()  # flushes the task's log lines before the rows are printed
    collected: list[dict] = []
    for r in rows:
        emit(r, collected)
    log(f"wrote {write_results(NAME, collected)}")


if __name__ == "__main__":
    main()
