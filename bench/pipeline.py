"""Pipeline benchmark: micro-batches over stage actors vs the same stages one micro-batch
at a time, and vs the unsharded model on one worker with the same resources.

    flock /tmp/aimass-heavy.lock .venv/bin/python -m bench.pipeline     # ~2 min on 2 cores
    .venv/bin/python -m bench.pipeline --layers 4 --iters 2             # a quick smoke run

A fresh GPT (byte vocabulary, ``--embd`` wide, ``--layers`` deep; weights do not change the
cost) is registered in the cluster's registry, then served three ways, each forward one
batch of ``--batch`` sequences of ``--seq`` tokens, its logits back in the driver:

- pipelined: ``StagedGPT`` over ``--stages`` stage actors (1 CPU, 1 torch thread each), the
  batch cut into ``--micro`` micro-batches sent through all stages at once (each stage call
  takes the previous stage's ObjectRef, so stage k works on micro-batch i while stage k+1
  works on i-1);
- sequential: the same stage actors, the micro-batches sent one after another, each waited
  for before the next: no stage ever overlaps another;
- unsharded: one stage holding the whole model, with all the stages' CPUs and threads
  (``--stages`` of each), the whole batch in one forward.

``ratio`` = sequential / pipelined time (median of ``--iters``): the pipelining gain. Its ideal
is m·p/(m+p-1) (m micro-batches, p stages, equal stages, free transfers); goal: >= 80 % of
it. ``unsharded_ratio`` = unsharded / pipelined time: below 1 is what sharding costs when the
model fits one worker. The cluster is a private one started and stopped here, or with
``--existing`` the running cluster of the current ``AIMASS_*`` settings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ray
import torch

from actors.pipeline import PipelineConfig, StagedGPT
from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results
from models import package
from models.registry import Registry
from models.weights import save_weights
from models.zoo import architecture, build_model

NAME = "pipeline"
MODEL = "bench-pipeline"
GOAL_SHARE = 0.8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--micro", type=int, default=8, help="micro-batches per batch")
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--embd", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5, help="timed forwards per side")
    parser.add_argument("--existing", action="store_true", help="use the running cluster")
    return parser.parse_args(argv)


def register(registry: Registry, args: argparse.Namespace) -> int:
    """A fresh GPT of the benchmark's shape as a new version of MODEL; returns its number."""
    options = {
        "preset": "tiny",
        "n_layer": args.layers,
        "n_head": args.heads,
        "n_embd": args.embd,
        "block_size": args.seq,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_weights(build_model("gpt", **options), folder / package.WEIGHTS_FILE)
        signature = architecture("gpt").signature_for(options)
        package.PackageConfig("gpt", signature, options, {}).write(folder)
        run = registry.client.create_run(registry.experiment(MODEL))
        return registry.register(MODEL, run.info.run_id, folder).version


def timed(forward: Callable[[], object], iters: int) -> dict:
    forward()  # warm-up: first calls pay for lazy init in each stage
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "times_s": [round(t, 4) for t in times]}


def measure(registry: Registry, version: int, args: argparse.Namespace) -> dict:
    idx = torch.randint(0, 256, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    staged = StagedGPT.from_registry(
        registry, MODEL, version, PipelineConfig(num_stages=args.stages, micro_batches=args.micro)
    )
    try:
        log("pipelined and sequential, on the same stages")
        group = staged.group

        def sequential() -> list:
            return [
                ray.get(group.submit(micro, micro_batches=1)[0][0])
                for micro in torch.tensor_split(idx, args.micro)
            ]

        pipelined = timed(lambda: staged.logits(idx), args.iters)
        one_at_a_time = timed(sequential, args.iters)
        rows = [
            {"name": r.name, "layers": r.layers, "param_bytes": r.param_bytes}
            for r in staged.placement()
        ]
    finally:
        staged.shutdown()
    log("unsharded, one worker with every stage's CPUs")
    whole = StagedGPT.from_registry(
        registry,
        MODEL,
        version,
        PipelineConfig(
            num_stages=1,
            micro_batches=1,
            num_cpus_per_stage=args.stages,
            threads_per_stage=args.stages,
        ),
    )
    try:
        unsharded = timed(lambda: whole.logits(idx), args.iters)
    finally:
        whole.shutdown()
    return {
        "pipelined": pipelined,
        "sequential": one_at_a_time,
        "unsharded": unsharded,
        "stages": rows,
    }


def report(m: dict, args: argparse.Namespace) -> dict:
    p, mb = args.stages, args.micro
    ideal = mb * p / (mb + p - 1)
    ratio = m["sequential"]["median_s"] / m["pipelined"]["median_s"]
    return {
        "name": NAME,
        "ratio": round(ratio, 3),
        "ratio_of": "sequential / pipelined forward time (same stages), median",
        "goal": f">= {GOAL_SHARE:g} x m*p/(m+p-1) = {GOAL_SHARE * ideal:.3f}",
        "goal_met": ratio >= GOAL_SHARE * ideal,
        "ideal": round(ideal, 3),
        "share_of_ideal": round(ratio / ideal, 3),
        "unsharded_ratio": round(m["unsharded"]["median_s"] / m["pipelined"]["median_s"], 3),
        "unsharded_ratio_of": "unsharded (1 worker, p CPUs, p threads) / pipelined time",
        **m,
        "config": vars(args),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    with cluster(args.existing) as settings:
        ray.init(address=settings.gcs_address, logging_level="ERROR", log_to_driver=False)
        try:
            registry = Registry.from_settings(settings)
            m = measure(registry, register(registry, args), args)
        finally:
            ray.shutdown()
    row = emit(report(m, args))
    log(f"wrote {write_results(NAME, [row])}")


if __name__ == "__main__":
    main()
