"""Tune a training preset's hyperparameters with Ray Tune; register the best trial's model.

Submit it to the cluster (run from the repository root):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.tune --config digits_cnn --samples 16 --name digits-search

Every trial is one Ray Train run of the preset (``--config``, with the fixed ``--set``
overrides) and the trial's sampled values: a driver function that fits a TorchTrainer and
forwards each epoch's metrics to Tune (``TuneReportCallback``), the Ray 2.60 pattern.
ASHA stops weak trials early and Optuna's TPE proposes the next values by default
(``--scheduler fifo`` runs every trial to the end). ``--search`` picks how values are chosen:

- ``optuna`` (default): TPE, a Bayesian model of the finished trials;
- ``random``: sampled at random;
- ``grid``: every combination of the space's choices (a randint's every integer), each
  ``--samples`` times (default 1: ``--samples 2`` runs the grid twice); a float range has no
  grid, so its points are written as a choice:
  ``--search grid --space lr=choice:1e-3,1e-2 --space batch_size=choice:32,64`` (4 trials);
- ``evolution``: Optuna's NSGA-II genetic algorithm, seeded by ``--seed``: a first
  generation of ``--population-size`` trials at random (default about the square root of
  ``--samples``), then generations bred by crossover and mutation from the best so far.

``--scheduler pbt`` is population based training: trials sampled at random run to the end
and every ``--perturbation-interval`` epochs the weakest restarts from a stronger trial's
checkpoint with that trial's values mutated (``jobs._private.tune.trial`` says how).
The space defaults to lr, weight_decay and batch_size; ``--space`` replaces it, e.g.
``--space lr=loguniform:1e-4:1e-2 --space batch_size=choice:16,32,64``. Trials run as many
at a time as the cluster's free CPUs (GPUs with ``--set use_gpu=true``) allow, one CPU kept
for data loading; ``--max-concurrent N`` fixes it.

The experiment lives at ``<storage>/ray_tune/<name>``. If the driver dies, submit again with
``--name <name> --resume``: finished trials stay as they are and are never trained again;
interrupted ones continue from their last epoch's checkpoint. At the end the best trial's
last checkpoint becomes a model version (lineage: data manifest, git sha, the trial's run)
with alias ``candidate``, and every trial's curve (PNG) and a summary table (CSV and
Markdown) go to the experiment's MLflow run, which holds one nested run per trial.
"""

from __future__ import annotations

import time

import ray

from cluster.provenance import git_sha
from cluster.settings import get_settings
from jobs._private import runs
from jobs._private.cli import JobParser, add_model_flags, add_preset_flags, preset_config, validate
from jobs._private.tune.context import TrialContext
from jobs._private.tune.report import write_report
from jobs._private.tune.tracking import load_spec, publish_best, start_experiment
from jobs._private.tune.tuner import max_concurrent, new_tuner, restore
from jobs.configs import TuneJobConfig
from models.dataset import dataset_uri, read_manifest
from models.refs import CANDIDATE
from models.registry import Registry

FLAGS = ("samples", "scheduler", "search", "grace_period", "reduction_factor",
         "perturbation_interval", "population_size", "max_concurrent", "seed")  # fmt: skip
"""TuneJobConfig's fields given as ``--flag value`` (``--grace-period 2``)."""


def parse(argv: list[str] | None) -> tuple[TuneJobConfig, bool]:
    """The job's config from its flags; with ``--resume``, the experiment's saved one."""
    parser = JobParser(description=__doc__.split("\n")[0])
    add_preset_flags(parser, default="digits_cnn_smoke")
    parser.add_argument("--name", help="experiment name (default: <config>-tune-<timestamp>)")
    parser.add_argument("--space", action="append", default=[], metavar="KEY=DOMAIN",
                        help="a search dimension, e.g. lr=loguniform:1e-4:1e-2 or "
                        "batch_size=choice:16,32,64; given, they replace the default space")  # fmt: skip
    add_model_flags(parser, TuneJobConfig, only=FLAGS)
    parser.add_argument("--resume", action="store_true",
                        help="continue the experiment --name after its driver died")  # fmt: skip
    args = vars(parser.parse_args(argv))
    resume, name = args.pop("resume"), args.pop("name")
    if resume:
        if not name:
            parser.error("--resume needs --name <experiment> (the name the first run used).")
        return load_spec(get_settings(), name)[0], True
    preset_config(parser, args["config"], args["set"])  # a bad --set fails here, named
    given = {k: v for k, v in args.items() if v not in (None, [])}
    given["name"] = name or f"{args['config']}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    given["overrides"] = tuple(given.pop("set", ()))
    if "space" in given:  # KEY=DOMAIN: the domain's text validates as a Param
        pairs = (pair.partition("=") for pair in given["space"])
        given["space"] = {key: domain for key, _, domain in pairs}
    flags = {"overrides": "--set", "space": "--space"}
    return validate(parser, TuneJobConfig, given, flags), False


def announce(job: TuneJobConfig, parent_run_id: str) -> int:
    """Print what the experiment will run; the trials it runs at once."""
    base = job.base()
    concurrency = max_concurrent(job, base)
    search = {
        "grid": f"grid x {job.samples}",
        "evolution": f"evolution (generations of {job.population})",
    }
    print(
        f"[tune] {job.name} (mlflow {parent_run_id}): {job.trials} trials of {job.config}, "
        f"{job.scheduler} + {search.get(job.search, job.search)}, {concurrency} at a time, "
        f"{base.num_workers} Ray Train workers each",
        flush=True,
    )
    if job.scheduler == "pbt" and concurrency < job.samples:
        print(
            f"[tune] pbt with {job.samples} trials but {concurrency} at a time: "
            "trials take turns, each pausing at every perturbation and resuming "
            "later from its checkpoint; --samples at most what fits runs faster",
            flush=True,
        )
    return concurrency


def main(argv: list[str] | None = None) -> None:
    job, resume = parse(argv)
    settings = get_settings()
    manifest = read_manifest(dataset_uri(settings.storage_root, job.base().dataset))
    registry = Registry.from_settings(settings)
    ray.init()
    if resume:
        parent = load_spec(settings, job.name)[1]
        if registry.client.get_run(parent).info.status == "FINISHED":
            raise SystemExit(
                f"Experiment {job.name!r} already finished (MLflow run {parent}); nothing to "
                "resume."
            )
    else:
        parent = start_experiment(job, registry, settings)
    ctx = TrialContext(job, settings, manifest, parent, git_sha())
    with runs.closing(registry, parent):
        tuner = restore(ctx) if resume else new_tuner(ctx, announce(job, parent))
        results = tuner.fit()
        if all(result.error for result in results):
            raise SystemExit(f"[tune] every trial failed; the first: {results[0].error}")
        version, test_metrics, best_trial = publish_best(results, ctx)
        write_report(results, ctx, best_trial)
    metric = "accuracy" if "accuracy" in test_metrics else next(iter(test_metrics))
    print(
        f"[tune] registered {version.name} version {version.version} from trial {best_trial} "
        f"(test {metric} {test_metrics[metric]:.4f}); alias {CANDIDATE} -> "
        f"{version.name} version {version.version}",
        flush=True,
    )


if __name__ == "__main__":
    main()
