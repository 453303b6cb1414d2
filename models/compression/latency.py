"""Latency of a model at a batch size: ONNX Runtime and torch eager, measured alike.

Both sides time the same thing (one synchronous call on one fixed batch, after a warmup)
with the same thread count, so their ratio compares the runtimes and not the harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.digits import NUM_FEATURES, PIXEL_MAX
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Per-call latency over ``iters`` calls, each on one batch of ``batch_size`` rows."""

    batch_size: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    rows_per_s: float
    """Throughput at the mean latency: batch_size / mean."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _measure(run: Callable[[], object], batch_size: int, iters: int, warmup: int) -> LatencyStats:
    for _ in range(warmup):
        run()
    times_ms = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        run()
        times_ms[i] = (time.perf_counter() - t0) * 1000
    mean = float(times_ms.mean())
    return LatencyStats(
        batch_size=batch_size,
        p50_ms=float(np.percentile(times_ms, 50)),
        p99_ms=float(np.percentile(times_ms, 99)),
        mean_ms=mean,
        rows_per_s=batch_size / mean * 1000,
    )


def _inputs(batch_size: int, input_shape: tuple[int, ...]) -> np.ndarray:
    # Pixel-count-like values; these models' latency does not depend on them.
    rng = np.random.default_rng(0)
    return rng.uniform(0, PIXEL_MAX, (batch_size, *input_shape)).astype(np.float32)


def _check(batch_size: int, iters: int) -> None:
    if batch_size < 1 or iters < 1:
        raise ValueError(f"batch_size and iters must be >= 1, got {batch_size} and {iters}.")


def onnx_latency(
    path: Path, batch_size: int, *, threads: int = 1, iters: int = 200, warmup: int = 20
) -> LatencyStats:
    """Per-call latency of an ONNX model in ONNX Runtime with ``threads`` intra-op threads.

    The input shape comes from the model's input (its batch dimension set to ``batch_size``).
    """
    _check(batch_size, iters)
    session = cpu_session(Path(path), threads=threads)
    dims = session.get_inputs()[0].shape[1:]
    # A symbolic dimension other than the batch would need a caller-chosen size: none here.
    shape = tuple(d if isinstance(d, int) else NUM_FEATURES for d in dims)
    x = _inputs(batch_size, shape)
    return _measure(lambda: session.run([OUTPUT_NAME], {INPUT_NAME: x}), batch_size, iters, warmup)


def torch_latency(
    model: nn.Module,
    batch_size: int,
    *,
    threads: int = 1,
    iters: int = 200,
    warmup: int = 20,
    input_shape: tuple[int, ...] = (NUM_FEATURES,),
) -> LatencyStats:
    """Per-call latency of a torch model in eager mode (inference mode) with ``threads``
    intra-op threads; the process's thread setting is restored afterwards.

    Args:
        input_shape: Per instance, batch excluded (``Signature.input_shape``).
    """
    _check(batch_size, iters)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.from_numpy(_inputs(batch_size, input_shape))
    model = model.eval()
    try:
        with torch.inference_mode():
            return _measure(lambda: model(x), batch_size, iters, warmup)
    finally:
        torch.set_num_threads(previous)


def file_size_bytes(path: Path | str) -> int:
    """Size of a file on disk, in bytes."""
    return Path(path).stat().st_size
