"""Serve benchmark, compute-bound: the reference transformer through the gateway (batched)
vs plain FastAPI + ONNX Runtime per request, and vs ONNX Runtime's own best-batch limit.

    .venv/bin/python -m bench.serve_model             # ~3 min, plus ~3 min to train once
    .venv/bin/python -m bench.serve_model --duration 5 --rounds 1   # a quick smoke run

The model is the reference transformer classifier (``digits_transformer``, 3.2 M
parameters, 16 tokens: ~1.6 ms per instance in ONNX Runtime on one thread, the heaviest
classifier of the zoo), registered under its own name ``digits_transformer``. When the
registry has no champion of that name, the digits dataset is ingested and the model trained
as jobs (``--config digits_transformer``, 3 epochs, no accuracy gate: weights do not change
a request's cost). Both sides answer ``POST /v1/models/digits_transformer/predict`` with
one 64-pixel test image per request and an API key, at the same ``--concurrency``:

- ours: the model API from ``serve_apps/serve_config.yaml`` (Serve's proxy, the Gateway,
  the Predictor with ``@serve.batch``: up to ``max_batch_size`` requests per ONNX Runtime
  call, autoscaled replicas);
- baseline: plain FastAPI + uvicorn + ONNX Runtime, one process, one ONNX Runtime call per
  request (no batching), the gateway's handler in-process (see ``bench.serve_overhead``),
  at the Gateway replicas' niceness;
- limit: ONNX Runtime in one process, no HTTP, at batch sizes 1..64 with the Predictor's
  intra-op thread count, at the Gateway replicas' niceness: its best instances/s.

``ratio`` = ours req/s / baseline req/s at the same concurrency (both p99s reported beside
it). Goal: >= 1.5. ``fraction_of_limit`` = ours req/s / the limit. Goal: >= 0.6. The client,
the ABAB alternation and the cluster (private, or ``--existing``) are those of
``bench.serve_overhead``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench import _serve_load as sl
from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results

NAME = "serve_model"
MODEL = "digits_transformer"
TRAIN = (
    "--config digits_transformer --set register_as=digits_transformer "
    "--set epochs=3 --set min_accuracy=0"
)
RATIO_GOAL = 1.5
FRACTION_GOAL = 0.6
BATCHES = (1, 2, 4, 8, 16, 32, 64)


def ort_limit(served: sl.Served, x: np.ndarray, nice: int) -> dict:
    """The limit, measured in a child process at niceness ``nice`` (the servers')."""
    context = multiprocessing.get_context("spawn")
    increment = max(nice - os.nice(0), 0)
    with ProcessPoolExecutor(1, context, initializer=os.nice, initargs=(increment,)) as pool:
        return {"limit": pool.submit(_ort_limit, served, x).result() | {"nice": nice}}


def _ort_limit(served: sl.Served, x: np.ndarray, seconds: float = 1.5) -> dict:
    """Instances/s of the served ONNX file in this process at each batch size; the best."""
    from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session

    session = cpu_session(served.onnx, served.threads)
    x = x.reshape(len(x), *served.input_shape).astype(np.float32)
    by_batch = {}
    for batch in BATCHES:
        inputs = {INPUT_NAME: x[:batch]}
        session.run([OUTPUT_NAME], inputs)  # warm-up
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            session.run([OUTPUT_NAME], inputs)
            n += 1
        by_batch[batch] = round(n * batch / elapsed, 1)
    best = max(by_batch, key=by_batch.get)
    log(f"ONNX Runtime limit: {by_batch[best]:.0f} instances/s at batch {best}")
    return {
        "instances_per_s": by_batch[best],
        "best_batch": best,
        "by_batch": by_batch,
        "threads": served.threads,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def report(m: dict) -> dict:
    ours, base = m["ours"], m["baseline"]
    ratio = ours["req_per_s"] / base["req_per_s"]
    fraction = ours["req_per_s"] / m["limit"]["instances_per_s"]
    return {
        "name": NAME,
        "ratio": round(ratio, 3),
        "goal": f"ratio >= {RATIO_GOAL} and fraction_of_limit >= {FRACTION_GOAL}",
        "goal_met": ratio >= RATIO_GOAL and fraction >= FRACTION_GOAL,
        "fraction_of_limit": round(fraction, 3),
        "p99_ms": {"ours": ours["p99_ms"], "baseline": base["p99_ms"]},
        **m,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sl.add_load_args(parser, concurrency=32)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with cluster(args.existing) as settings, tempfile.TemporaryDirectory() as tmp:
        m = sl.measure(settings, MODEL, TRAIN, args, Path(tmp), limit=ort_limit)
    row = emit(report(m))
    log(f"wrote {write_results(NAME, [row])}")


if __name__ == "__main__":
    main()
