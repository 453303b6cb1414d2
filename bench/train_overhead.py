"""Training overhead benchmark: Ray Train + DeepSpeed vs ``torchrun`` + DeepSpeed.

    .venv/bin/python -m bench.train_overhead              # 10-25 minutes on 2 shared cores
    .venv/bin/python -m bench.train_overhead --steps 10 --rounds 1   # a quick smoke run

Both sides train the same model on the same data for the same steps, on 2 CPU processes
with gloo: a GPT (``small`` preset, 0.8 M parameters, fp32 as the training loop runs on
CPU) under DeepSpeed ZeRO-2, configured by the training loop's own ``deepspeed_config``
with its torch AdamW, micro-batch ``--batch-size`` per rank. The data: the
``python_stdlib`` text dataset, ingested once into the bench cluster's storage (under
``<storage>/bench/train_overhead``); each process reads it the same way
(``Manifest.load_tokens``) and takes the same consecutive micro-batches for its rank, so
the two sides compute identical steps (their losses are compared: ``same_losses``).

- ours: a Ray Train ``TorchTrainer`` (2 workers, 1 CPU each) on the embedded local
  cluster (a private one, or ``--existing``);
- baseline: ``python -m torch.distributed.run --standalone --nproc_per_node 2`` running
  this module's worker entry, which makes the gloo process group itself. It starts at the
  niceness Ray gives its worker processes (raylet's ``worker_niceness``: 15 by default;
  ``--no-match-nice`` keeps this process's, usually 0). Without that, on a machine busy
  with other work the Ray workers get a small share of the CPU next to nice-0 processes
  and the comparison measures the scheduler's priorities, not Ray.

Both run one worker body (``run_worker``): load the tokens and initialise DeepSpeed
(setup), one warmup step, a barrier, ``--steps`` timed steps of ``train_step`` (the same
function), a barrier. Intra-op threads are set to ``--threads`` on both sides.

``ratio`` = Ray Train training time / torchrun training time: the timed steps only, rank
0, summed over ``--rounds`` rounds run back to back in ABBA order (ray, torchrun,
torchrun, ray, ...) so drift on the shared machine falls on both sides alike. Goal:
<= 1.05. Each step is timed too: ``median_step_ratio`` (Ray / torchrun median step time
over all runs) is less swayed by bursts of load from other work on the machine, and
``cpu_ratio`` (CPU seconds the training processes used over the timed steps, every thread,
both ranks) counts the work each side did whatever the machine's load.

Setup is reported apart, per side: ``launch_s`` (the ``fit()`` call or the launcher's
start until the worker body runs with its process group: worker-group start vs process
spawn), ``init_s`` (data load and DeepSpeed init, same code both sides), ``warmup_s``,
``teardown_s`` (body done until ``fit()`` returns or the launcher exits) and ``wall_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import torch

from bench import _deepspeed_bench as dsb
from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results
from cluster import storage

NAME = "train_overhead"
GOAL = 1.05
REPO = Path(__file__).resolve().parent.parent


@dataclass(kw_only=True, frozen=True, slots=True)
class BenchConfig:
    preset: str = "small"
    zero_stage: int = 2
    batch_size: int = 8
    """Micro-batch per rank (sequences of the dataset's 128 + 1 tokens)."""
    steps: int = 30
    """Timed optimizer steps per run, after one warmup step."""
    rounds: int = 2
    """Runs per side, in ABBA order."""
    workers: int = 2
    threads: int = 1
    """torch intra-op threads per process (2 processes on 2 cores)."""
    match_nice: bool = True
    """Start the torchrun side at the niceness Ray gives its workers (15 by default)."""


def run_worker(bench: BenchConfig, data_root: str, rank: int, world: int) -> dict:
    """The body both sides run on every rank, process group already up. Wall-clock stamps
    (time.time) are for the driver's setup figures; the training time is a perf_counter
    span between two barriers."""
    import torch.distributed as dist

    entered = time.time()
    torch.set_num_threads(bench.threads)
    cfg = dsb.gpt_train_config(
        NAME, preset=bench.preset, zero_stage=bench.zero_stage, batch_size=bench.batch_size
    )
    tokens = dsb.load_tokens(data_root)
    engine = dsb.init_engine(cfg, world, bf16=False)
    ready = time.time()
    losses = [dsb.train_step(engine, dsb.batch(tokens, 0, rank, world, bench.batch_size))]
    dist.barrier()
    warm = time.time()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    marks = [t0]
    for step in range(1, bench.steps + 1):
        losses.append(
            dsb.train_step(engine, dsb.batch(tokens, step, rank, world, bench.batch_size))
        )
        marks.append(time.perf_counter())
    dist.barrier()
    train_s = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0  # every thread of this process: Ray's ones too
    done = time.time()
    ranks: list = [None] * world
    dist.all_gather_object(ranks, {"cpu_s": cpu_s, "nice": os.nice(0)})
    psi = sum(p.numel() for p in engine.module.parameters())
    engine.destroy()
    return {
        "rank": rank,
        "entered": entered,
        "ready": ready,
        "warm": warm,
        "done": done,
        "train_s": train_s,
        "step_s": [b - a for a, b in zip(marks, marks[1:], strict=False)],
        "losses": losses,
        "psi": psi,
        "cpu_s": sum(r["cpu_s"] for r in ranks),
        "nice": [r["nice"] for r in ranks],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def _niceness() -> int:
    return os.nice(0)


def train_func(config: dict) -> None:
    """Ray Train's side: the shared body on each worker."""
    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    out = run_worker(
        BenchConfig(**config["bench"]), config["data_root"], rank, ctx.get_world_size()
    )
    dsb.report_json(out, rank)


def torchrun_entry(bench: BenchConfig, data_root: str, out_path: str) -> None:
    """torchrun's side: make the process group (Ray Train does that before train_func),
    run the shared body, rank 0 writes its figures."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        out = run_worker(bench, data_root, dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()
    if out["rank"] == 0:
        Path(out_path).write_text(json.dumps(out))


def side_figures(out: dict, launched: float, finished: float, side: str) -> dict:
    return {
        "side": side,
        "train_s": round(out["train_s"], 3),
        "step_ms": round(1000 * out["train_s"] / len(out["step_s"]), 1),
        "step_s": out["step_s"],
        "launch_s": round(out["entered"] - launched, 2),
        "init_s": round(out["ready"] - out["entered"], 2),
        "warmup_s": round(out["warm"] - out["ready"], 2),
        "teardown_s": round(finished - out["done"], 2),
        "wall_s": round(finished - launched, 2),
        "final_loss": out["losses"][-1],
        "losses": out["losses"],
        "cpu_s": round(out["cpu_s"], 3),
        "nice": out["nice"],
        "omp_num_threads": out["omp_num_threads"],
        "psi": out["psi"],
    }


def run_ray(bench: BenchConfig, data_root: str, storage_root: str, index: int) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_func,
        train_loop_config={"bench": asdict(bench), "data_root": data_root},
        scaling_config=ScalingConfig(num_workers=bench.workers, use_gpu=False),
        run_config=RunConfig(
            name=f"{NAME}-{int(time.time())}-{index}",
            storage_path=storage.join(storage_root, "ray_train"),
        ),
    )
    launched = time.time()
    result = trainer.fit()
    return side_figures(dsb.result_json(result), launched, time.time(), "ray_train")


def run_torchrun(bench: BenchConfig, data_root: str, folder: Path, index: int, nice: int) -> dict:
    out_path, log_path = folder / f"torchrun-{index}.json", folder / f"torchrun-{index}.log"
    increment = nice - os.nice(0)
    command = [
        *(["nice", "-n", str(increment)] if increment > 0 else []),
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(bench.workers),
        "-m",
        "bench.train_overhead",
        "--worker-out",
        str(out_path),
        "--data-root",
        data_root,
        "--bench-config",
        json.dumps(asdict(bench)),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launched = time.time()
    with log_path.open("w") as log_file:
        proc = subprocess.run(command, cwd=REPO, env=env, stdout=log_file, stderr=log_file)
    finished = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
    return side_figures(json.loads(out_path.read_text()), launched, finished, "torchrun")


def summary(bench: BenchConfig, runs: list[dict]) -> dict:
    sides = {s: [r for r in runs if r["side"] == s] for s in ("ray_train", "torchrun")}

    def total(side: str, key: str) -> float:
        return round(sum(r[key] for r in sides[side]), 3)

    def figures(side: str) -> dict:
        keys = ("train_s", "cpu_s", "launch_s", "init_s", "warmup_s", "teardown_s", "wall_s")
        per_run = [{k: r[k] for k in (*keys, "step_ms", "final_loss", "nice")} for r in sides[side]]
        steps = [t for r in sides[side] for t in r["step_s"]]
        return {
            "method": "Ray Train TorchTrainer + DeepSpeed"
            if side == "ray_train"
            else "torchrun --nproc_per_node 2 + DeepSpeed",
            **{f"{k}_mean": round(total(side, k) / len(sides[side]), 3) for k in keys},
            "train_s_total": total(side, "train_s"),
            "step_ms_median": round(1000 * statistics.median(steps), 1),
            "step_ms_p90": round(
                1000 * (statistics.quantiles(steps, n=10)[-1] if len(steps) > 1 else steps[0]), 1
            ),
            "runs": per_run,
        }

    ratio = total("ray_train", "train_s") / total("torchrun", "train_s")
    per_round = [
        round(a["train_s"] / b["train_s"], 3)
        for a, b in zip(sides["ray_train"], sides["torchrun"], strict=True)
    ]
    losses = {tuple(r["losses"]) for r in runs}
    median_step = {
        side: statistics.median(t for r in sides[side] for t in r["step_s"]) for side in sides
    }
    return {
        "name": NAME,
        "ratio": round(ratio, 3),
        "goal": f"<= {GOAL}",
        "goal_met": ratio <= GOAL,
        "ratio_of": "Ray Train / torchrun time of the timed steps (rank 0, summed over rounds)",
        "candidate": figures("ray_train"),
        "baseline": figures("torchrun"),
        "round_ratios": per_round,
        "median_step_ratio": round(median_step["ray_train"] / median_step["torchrun"], 3),
        "cpu_ratio": round(total("ray_train", "cpu_s") / total("torchrun", "cpu_s"), 3),
        "setup_s_mean": {
            side: round((total(side, "launch_s") + total(side, "init_s")) / len(sides[side]), 2)
            for side in sides
        },
        "same_losses": len(losses) == 1,
        "order": [r["side"] for r in runs],
        "psi": runs[0]["psi"],
        "config": asdict(bench),
    }


def measure(bench: BenchConfig, storage_root: str) -> list[dict]:
    from jobs.ingest import IngestConfig, ingest

    data_root = storage.join(storage_root, "bench", NAME)
    manifest = ingest(IngestConfig(dataset=dsb.DATASET), data_root)
    log(f"dataset {manifest.root}: {manifest.rows('train')} train sequences")
    # Ray starts its workers at a niceness (``worker_niceness``, 15 by default): on a busy
    # machine that alone slows them next to a nice-0 process. Match it, or report it.
    ray_nice = ray.get(ray.remote(num_cpus=0)(_niceness).remote())
    nice = ray_nice if bench.match_nice else os.nice(0)
    log(f"Ray workers run at niceness {ray_nice}; torchrun at {max(nice, os.nice(0))}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="aimass-bench-train-") as tmp:
        for index in range(bench.rounds):
            order = ("ray_train", "torchrun") if index % 2 == 0 else ("torchrun", "ray_train")
            for side in order:
                log(f"round {index + 1}/{bench.rounds}: {side}, {bench.steps} timed steps")
                if side == "ray_train":
                    runs.append(run_ray(bench, data_root, storage_root, index))
                else:
                    runs.append(run_torchrun(bench, data_root, Path(tmp), index, nice))
                log(
                    f"  {side}: train {runs[-1]['train_s']:.2f} s, "
                    f"launch {runs[-1]['launch_s']:.1f} s, init {runs[-1]['init_s']:.1f} s"
                )
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=defaults.steps, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="runs per side")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--preset", default=defaults.preset, help="GPT preset")
    parser.add_argument(
        "--no-match-nice",
        action="store_true",
        help="run torchrun at this process's niceness, not at the Ray workers'",
    )
    parser.add_argument("--existing", action="store_true", help="use the running cluster")
    # The torchrun side's entry (internal): run the worker body on this rank.
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    parser.add_argument("--bench-config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.batch_size) < 1:
        parser.error("--steps, --rounds and --batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_out:
        torchrun_entry(
            BenchConfig(**json.loads(args.bench_config)), args.data_root, args.worker_out
        )
        return
    bench = BenchConfig(
        preset=args.preset,
        batch_size=args.batch_size,
        steps=args.steps,
        rounds=args.rounds,
        match_nice=not args.no_match_nice,
    )
    with cluster(args.existing) as settings:
        ray.init(address=settings.gcs_address, logging_level="ERROR")
        try:
            runs = measure(bench, settings.storage_root)
        finally:
            ray.shutdown()
    collected: list[dict] = []
    emit(summary(bench, runs) | {"machine": machine_info()}, collected)
    log(f"wrote {write_results(NAME, collected)}")


if __name__ == "__main__":
    main()
