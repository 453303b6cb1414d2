"""Tune benchmark: ASHA vs random search on the same trial budget, compute to reach a score.

    .venv/bin/python -m bench.asha_vs_random                         # 10-20 minutes on 2 cores
    .venv/bin/python -m bench.asha_vs_random --samples 6 --epochs 3  # a quick smoke run

Both sides are ``jobs.tune`` experiments over the digits CNN (``digits_cnn_smoke`` with
``--epochs`` epochs, one Ray Train worker per trial) with the job's default search space,
the same trial budget (``--samples`` trials of at most ``--epochs`` epochs), the same
concurrency and the same seed:

- baseline: random search with FIFO scheduling (every trial runs all its epochs);
- ours: ASHA (grace period 1, reduction factor 3) stopping weak trials early, over random
  search by default, so that both sides sample the very same configurations and the
  scheduler is the only difference.

``--search`` names one or more of the job's strategies for ASHA's side, each its own
experiment, JSON row and results file (``bench/results/asha_vs_random_<search>.jsonl``;
random keeps ``asha_vs_random.jsonl``), all against the one random baseline of the run:

    .venv/bin/python -m bench.asha_vs_random --search grid evolution  # ~25 min on 2 cores

- ``optuna``: the job's default TPE;
- ``grid``: the 8 points of ``GRID`` (two values each of lr, weight_decay and batch_size,
  inside the default space), run ``--samples`` / 8 times;
- ``evolution``: NSGA-II, generations of ``round(sqrt(--samples))`` trials (3 of 8).

Compute is counted in trial iterations (epochs, one per result a trial reports), in the
order the results reached the Tune driver. ``target`` is the best validation accuracy
random search reported (any trial, any epoch) minus ``--tolerance`` (default: one
validation image, so that run-to-run noise of the same configuration does not decide).

``ratio`` = epochs ASHA had run, all trials together, when it first reported a score >=
target ÷ epochs random search ran in all (its budget: what it spends before its best is
known to be its best). Goal: <= 0.5. If ASHA never reaches the target, the ratio is its
whole budget over random search's and ``asha_reached`` is false. ``ratio_first_reach``
divides by the epochs random search had run when it first reported the target instead; it
depends on which of the concurrent trials happens to report first (0.32 to 0.71 over three
runs of the same configurations), so it is reported, not judged.

The cluster is a private one (temp home, free ports) started and stopped here, or with
``--existing`` the running cluster of the current ``AIMASS_*`` settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results
from cluster import storage
from jobs import TUNE_EPOCHS_DONE, TrialContext, max_concurrent_trials, new_tuner, start_experiment
from jobs.configs import Param, TuneJobConfig
from jobs.ingest import IngestConfig, ingest
from models.dataset import dataset_uri, read_manifest
from models.registry import Registry

NAME = "asha_vs_random"
GOAL = 0.5
GRID = {
    "lr": Param.parse("choice:1e-3,1e-2"),
    "weight_decay": Param.parse("choice:1e-5,1e-3"),
    "batch_size": Param.parse("choice:16,64"),
}
"""``--search grid``'s points: log-spaced corners inside the job's default space."""
GRID_POINTS = math.prod(len(param.points()) for param in GRID.values())


class ResultLog(tune.Callback):
    """Appends every epoch's result the driver receives to a file, in arrival order (a file,
    not a list: Tune keeps its own copy of the callbacks it is given)."""

    def __init__(self, path: Path, metric: str) -> None:
        self.path, self.metric = path, metric
        self.last_epoch: dict[str, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # A trial that runs to its end returns its last epoch's result once more (the job's
        # final result): an epoch counts once.
        if result[TUNE_EPOCHS_DONE] <= self.last_epoch.get(trial.trial_id, 0):
            return
        self.last_epoch[trial.trial_id] = result[TUNE_EPOCHS_DONE]
        line = {
            "trial": trial.trial_id,
            "epoch": result[TUNE_EPOCHS_DONE],
            "score": result[self.metric],
        }
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")


def run_side(job: TuneJobConfig, settings, registry: Registry, folder: Path) -> dict:
    """Run one experiment; its results in arrival order, wall time and trial count."""
    base = job.base()
    manifest = read_manifest(dataset_uri(settings.storage_root, base.dataset))
    ctx = TrialContext(job, settings, manifest, start_experiment(job, registry, settings), "bench")
    concurrency = max_concurrent_trials(job, base)
    path = folder / f"{job.name}.jsonl"
    path.touch()
    log(f"{job.name}: {job.trials} trials, {concurrency} at a time")
    t0 = time.monotonic()
    grid = new_tuner(ctx, concurrency, callbacks=[ResultLog(path, base.objective()[0])]).fit()
    wall = time.monotonic() - t0
    registry.client.set_terminated(ctx.parent_run_id, status="FINISHED")
    events = [json.loads(line) for line in path.read_text().splitlines()]
    errors = sum(1 for r in grid if r.error)
    return {"events": events, "wall_s": round(wall, 1), "errors": errors, "trials": len(grid)}


def epochs_to_reach(events: list[dict], target: float) -> int | None:
    """Results received (epochs run, all trials) when a score first reached ``target``."""
    for i, event in enumerate(events, start=1):
        if event["score"] >= target:
            return i
    return None


def side_summary(side: dict, target: float, max_epochs: int) -> dict:
    events = side["events"]
    reached = {}
    for event in events:
        reached[event["trial"]] = max(reached.get(event["trial"], 0), event["epoch"])
    return {
        "epochs_total": len(events),
        "epochs_to_target": epochs_to_reach(events, target),
        "best_score": max(e["score"] for e in events),
        "trials": side["trials"],
        "trials_stopped_early": sum(1 for epochs in reached.values() if epochs < max_epochs),
        "errors": side["errors"],
        "wall_s": side["wall_s"],
    }


def compare(asha: dict, random: dict, tolerance: float, args, search: str) -> dict:
    best = max(e["score"] for e in random["events"])
    target = best - tolerance
    ours = side_summary(asha, target, args.epochs)
    base = side_summary(random, target, args.epochs)
    reached = ours["epochs_to_target"] is not None
    ours_epochs = ours["epochs_to_target"] if reached else ours["epochs_total"]
    ratio = ours_epochs / base["epochs_total"]
    return {
        "name": row_name(search),
        "ratio": round(ratio, 3),
        "goal": f"<= {GOAL}",
        "goal_met": reached and ratio <= GOAL,
        "asha_reached": reached,
        "ratio_first_reach": round(ours_epochs / base["epochs_to_target"], 3),
        "target": round(target, 4),
        "random_best": round(best, 4),
        "tolerance": round(tolerance, 4),
        "asha": ours,
        "random": base,
        "budget": {"samples": args.samples, "max_epochs": args.epochs, "seed": args.seed},
        "search": search,
        "machine": machine_info(),
    }


def row_name(search: str) -> str:
    """The row's name and results file: random's is the benchmark's own."""
    return NAME if search == "random" else f"{NAME}_{search}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=8, help="trials on each side")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of a trial run in full")
    parser.add_argument(
        "--search",
        nargs="+",
        choices=("random", "optuna", "grid", "evolution"),
        default=["random"],
        help="ASHA's search, one row each (default: random)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-concurrent", type=int, default=0, help="0: from the cluster")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="default: 1 / validation rows"
    )
    parser.add_argument("--existing", action="store_true", help="use the running cluster")
    args = parser.parse_args(argv)
    if "grid" in args.search and args.samples % GRID_POINTS:
        parser.error(
            f"--search grid runs GRID's {GRID_POINTS} points whole: give --samples as a "
            f"multiple of {GRID_POINTS}."
        )
    return args


def asha_side(search: str, stamp: str, common: dict) -> TuneJobConfig:
    """ASHA's experiment over ``search``; grid's runs GRID ``samples / GRID_POINTS`` times."""
    if search == "grid":
        common = {**common, "space": GRID, "samples": common["samples"] // GRID_POINTS}
    name = f"bench-asha-{stamp}" if search == "random" else f"bench-asha-{search}-{stamp}"
    return TuneJobConfig(name=name, scheduler="asha", search=search, **common)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = {
        "config": "digits_cnn_smoke",
        "overrides": ("num_workers=1", f"epochs={args.epochs}"),
        "samples": args.samples,
        "seed": args.seed,
        "max_concurrent": args.max_concurrent,
    }
    random = TuneJobConfig(
        name=f"bench-random-{stamp}", scheduler="fifo", search="random", **common
    )
    ashas = {search: asha_side(search, stamp, common) for search in dict.fromkeys(args.search)}
    with cluster(args.existing) as settings, tempfile.TemporaryDirectory() as tmp:
        uri = dataset_uri(settings.storage_root, "digits")
        # Ingest is deterministic: an existing digits dataset is the same one.
        manifest = read_manifest(uri) if storage.exists(f"{uri}/manifest.json") else None
        manifest = manifest or ingest(IngestConfig(), settings.storage_root)
        tolerance = 1 / manifest.rows("val") if args.tolerance is None else args.tolerance
        registry = Registry.from_settings(settings)
        # Trials and their Train workers log to the cluster; the bench prints progress only.
        ray.init(address=settings.gcs_address, logging_level="ERROR", log_to_driver=False)
        try:
            # Progress lines (the tune job's) go to stderr: stdout carries the JSON row only.
            with contextlib.redirect_stdout(sys.stderr):
                baseline = run_side(random, settings, registry, Path(tmp))
                sides = {
                    search: run_side(job, settings, registry, Path(tmp))
                    for search, job in ashas.items()
                }
        finally:
            ray.shutdown()
    for search, side in sides.items():
        row = emit(compare(side, baseline, tolerance, args, search))
        log(f"wrote {write_results(row['name'], [row])}")


if __name__ == "__main__":
    main()
