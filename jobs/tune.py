"""Tune a training preset's hyperparameters with Ray Tune; register the best trial's model.

Submit it to the cluster (run from the repository root):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.tune --config digits_cnn --samples 16 --name digits-search

Every trial is one Ray Train run of the preset (``--config``, with the fixed ``--set``
overrides) and the trial's sampled values: a driver function that fits a TorchTrainer and
forwards each epoch's metrics to Tune (``TuneReportCallback``), the Ray 2.60 pattern.
ASHA stops weak trials early and Optuna's TPE proposes the next values by default
(``--scheduler fifo`` runs every trial to the end, ``--search random`` samples at random).
``--scheduler pbt`` is population based training: trials sampled at random run to the end
and every ``--perturbation-interval`` epochs the weakest restarts from a stronger trial's
checkpoint with that trial's values mutated (``run_trial`` says how a trial does that).
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

import argparse
import csv
import json
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import ray
from mlflow.entities import Param as MlflowParam
from ray import tune
from ray.train import ScalingConfig, UserCallback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import TrialScheduler
from ray.util.queue import Queue

from cluster import storage
from cluster.provenance import git_sha
from cluster.settings import Settings, get_settings
from jobs._private.publish import publish
from jobs._private.trainer import load_model, make_trainer
from jobs.configs import PRESETS, Param, TrainConfig, TuneJobConfig
from models.dataset import Manifest, dataset_uri, read_manifest
from models.refs import CANDIDATE, GIT_TAG
from models.registry import Registry

EXPERIMENT_TAG = "aimass.tune_experiment"
TRIAL_TAG = "aimass.tune_trial"
STOPPED_EARLY_TAG = "aimass.tune_stopped_early"
RESULT_TAG = "aimass.tune_result"
"""A finished trial's final result (JSON), which Tune is given again if the driver died
before its own record of that trial's end."""
START_TAG = "aimass.tune_started_from"
"""PBT: the checkpoint a trial's current Train run started from (trial, epoch) and the
trial's values then (JSON); the run's params keep its first values."""
SPEC_FILE = "aimass_tune.json"
REPEATED = "repeats_last_epoch"
EPOCHS = "epochs_done"
"""Epochs a trial's Train run has completed: Tune's own ``training_iteration`` restarts at
1 when an interrupted trial resumes, while its Train run continues from its checkpoint."""
DATA_CPUS = 1
"""CPUs left free for Ray Data's read tasks when trials start (each reads its shards)."""
# A trial's driver only waits on its Train run, so it holds no CPU; a placement group
# bundle cannot be empty, hence a token of memory.
DRIVER_RESOURCES = {"memory": 1}


@dataclass(frozen=True, slots=True)
class TrialContext:
    """What every trial's driver needs, shipped once through the object store."""

    job: TuneJobConfig
    settings: Settings
    manifest: Manifest
    parent_run_id: str
    git_sha: str

    @property
    def experiment_uri(self) -> str:
        return experiment_uri(self.settings, self.job.name)

    def registry(self) -> Registry:
        return Registry.from_settings(self.settings)


def with_epochs(metrics: dict) -> dict:
    return {**metrics, EPOCHS: metrics["epoch"] + 1}


class EpochReport(TuneReportCallback):
    """Tune's report callback, adding ``epochs_done`` to each report (see ``EPOCHS``)."""

    def after_report(self, run_context, metrics, checkpoint):
        super().after_report(run_context, [with_epochs(metrics[0]), *metrics[1:]], checkpoint)


class CheckpointReport(UserCallback):
    """PBT's report callback: each epoch's metrics (with ``epochs_done``) *and checkpoint*
    go to the trial's driver (``fit_reporting_checkpoints``), which reports both to Tune.

    ``TuneReportCallback`` passes metrics only, and PBT clones a trial from the checkpoint
    Tune holds for it. The queue holds one epoch: the Train run waits for its driver.
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put((with_epochs(metrics[0]), checkpoint))


def experiment_uri(settings: Settings, name: str) -> str:
    return storage.join(settings.storage_root, "ray_tune", name)


def final_result(metrics: dict, metric: str) -> dict:
    """The part of a trial's last result that Tune's record and the publishing need."""
    keys = (metric, "epoch", EPOCHS, CHECKPOINT_PATH_KEY)
    return {key: metrics[key] for key in keys if key in metrics}


def find_trial_run(registry: Registry, job: TuneJobConfig, trial_id: str):
    """The MLflow run of ``trial_id`` in this experiment, or None before it started."""
    experiment = registry.experiment(job.base().register_as)
    found = registry.client.search_runs(
        [experiment],
        filter_string=f"tags.`{EXPERIMENT_TAG}` = '{job.name}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
    )
    return found[0] if found else None


def open_trial_run(ctx: TrialContext, trial_id: str, cfg: TrainConfig) -> tuple[str, dict | None]:
    """The trial's MLflow run id and, if it already finished, its final result.

    One run per trial, ever: a trial that resumes after the driver restarted reopens the
    run it had, so its epochs continue in the same place.
    """
    registry = ctx.registry()
    run = find_trial_run(registry, ctx.job, trial_id)
    if run is not None:
        if run.info.status == "FINISHED":
            return run.info.run_id, json.loads(run.data.tags[RESULT_TAG])
        registry.client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, None
    tags = {
        "mlflow.parentRunId": ctx.parent_run_id,
        EXPERIMENT_TAG: ctx.job.name,
        TRIAL_TAG: trial_id,
        GIT_TAG: ctx.git_sha,
        "aimass.run_name": cfg.name,
    }
    experiment = registry.experiment(cfg.register_as)
    run = registry.client.create_run(experiment, run_name=cfg.name, tags=tags)
    params = [MlflowParam(k, str(v)) for k, v in cfg.to_dict().items()]
    registry.client.log_batch(run.info.run_id, params=params)
    return run.info.run_id, None


def run_trial(config: dict, ctx: TrialContext) -> dict | None:
    """One trial: fit the preset with the sampled ``config`` on Ray Train, report to Tune.

    Under PBT each epoch's checkpoint goes to Tune too, and Tune may restart the trial from
    one (``tune.get_checkpoint()``): another trial's when PBT exploits it, with this trial's
    values mutated, or its own after a pause or a driver restart. The trial then fits a new
    Train run that starts from that checkpoint (``start_from``).
    """
    trial_id = tune.get_context().get_trial_id()
    cfg = ctx.job.trial(trial_id, config)
    run_id, finished = open_trial_run(ctx, trial_id, cfg)
    if finished is not None:
        # It ended just before the driver died, after Tune's last snapshot of the
        # experiment: Tune gets its final result again; it is not trained again.
        print(f"[tune] trial {trial_id} had already finished (run {run_id}); not retraining")
        return finished
    extra = {}
    if (checkpoint := tune.get_checkpoint()) is not None:
        cfg = start_from(checkpoint, trial_id, config, cfg, ctx, run_id)
        extra["init_checkpoint"] = checkpoint

    def trainer(callbacks: list):
        return make_trainer(
            cfg,
            ctx.manifest,
            ctx.settings,
            run_id,
            storage_path=storage.join(ctx.experiment_uri, "train"),
            callbacks=callbacks,
            **extra,
        )

    if ctx.job.scheduler == "pbt":
        values = {key: config[key] for key in ctx.job.space}
        meta = {"trial": trial_id, "config": values}
        result = fit_reporting_checkpoints(trainer, meta, cfg.epochs)
    else:
        result = trainer([EpochReport()]).fit()
    # result.metrics: those of its latest checkpoint, i.e. its last epoch
    last = {**with_epochs(result.metrics), CHECKPOINT_PATH_KEY: result.checkpoint.path}
    # Only a normal end is recorded here: a failure is recorded by the driver (TrialEvents),
    # because a trial that Tune stops, or whose driver dies, fails here on its way out.
    client = ctx.registry().client
    summary = final_result(last, cfg.objective()[0])
    client.set_tag(run_id, RESULT_TAG, json.dumps(summary))
    client.set_terminated(run_id, status="FINISHED")
    # Also the trial's final result: a Train run resumed at its last checkpoint (it ended
    # just as the driver died) trains and reports nothing, and Tune refuses a trial whose
    # results lack the metric. When epochs were reported, this repeats the last one.
    return {**summary, REPEATED: True}


def start_from(
    checkpoint: tune.Checkpoint,
    trial_id: str,
    config: dict,
    cfg: TrainConfig,
    ctx: TrialContext,
    run_id: str,
) -> TrainConfig:
    """The trial's config for a Train run starting from ``checkpoint`` (PBT), logged.

    The run gets a name never used before: a run of an existing name would resume from
    its own latest checkpoint, not this one.
    """
    meta = checkpoint.get_metadata()  # what fit_reporting_checkpoints wrote
    donor, epoch = meta["trial"], meta["epoch"]
    if donor == trial_id:
        print(f"[tune] trial {trial_id} resumes from its checkpoint of epoch {epoch}", flush=True)
    else:
        changes = ", ".join(
            f"{key} {_fmt(was)} -> {_fmt(config[key])}" for key, was in meta["config"].items()
        )
        print(
            f"[tune] trial {trial_id} exploits {donor}'s checkpoint of epoch {epoch}, {changes}",
            flush=True,
        )
    started = {"trial": donor, "epoch": epoch, "values": {k: config[k] for k in ctx.job.space}}
    ctx.registry().client.set_tag(run_id, START_TAG, json.dumps(started))
    return replace(cfg, name=f"{cfg.name}-from-{donor}-e{epoch}-{uuid.uuid4().hex[:6]}")


def fit_reporting_checkpoints(trainer, meta: dict, epochs: int) -> ray.train.Result:
    """Fit ``trainer(callbacks)`` in a thread, reporting each epoch's metrics and checkpoint
    to Tune from this one (a trial's thread, where ``tune.report`` works).

    Args:
        trainer: Builds the TorchTrainer, given its callbacks.
        meta: The trial's id and values, saved with each checkpoint (``start_from``).
        epochs: The run's last epoch, whose checkpoint Tune does not get: a trial PBT
            restarted from it would have nothing left to train.
    """
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    fitting = trainer([CheckpointReport(queue)])
    outcome = {}

    def fit() -> None:
        try:
            outcome["result"] = fitting.fit()
        except BaseException as err:  # raised again in the trial's thread
            outcome["error"] = err
        finally:
            queue.put(None)

    threading.Thread(target=fit, name="train-fit", daemon=True).start()
    while (item := queue.get()) is not None:
        metrics, saved = item  # saved: the Train run's checkpoint of that epoch
        checkpoint = None
        if saved is not None:
            metrics[CHECKPOINT_PATH_KEY] = saved.path  # as TuneReportCallback: for publishing
            if metrics[EPOCHS] < epochs:
                # Tune copies it into the trial's folder: the Train run keeps only its last
                # two, and PBT may clone this one later.
                checkpoint = tune.Checkpoint(saved.path, filesystem=saved.filesystem)
                checkpoint.set_metadata({**meta, "epoch": metrics[EPOCHS]})
        tune.report(metrics, checkpoint=checkpoint)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class TrialEvents(tune.Callback):
    """Progress lines for the job log, and the end of trials' MLflow runs that the trial
    itself did not close: a trial Tune stopped (early, or at ``max_t``) is ended before it
    can, and a failed one is recorded here."""

    def __init__(self, job: TuneJobConfig, tracking_uri: str, artifact_root: str) -> None:
        self.job, self.tracking_uri, self.artifact_root = job, tracking_uri, artifact_root
        self.metric, _ = job.base().objective()
        self.epochs = job.base().epochs

    def on_trial_start(self, iteration, trials, trial, **info):
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.config.items())
        print(f"[tune] trial {trial.trial_id} started: {values}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(REPEATED):
            return  # the last epoch's result again, as the trial's return value
        print(
            f"[tune] trial {trial.trial_id} epoch {result[EPOCHS]}/{self.epochs} "
            f"{self.metric}={result[self.metric]:.4f}",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = trial.last_result.get(EPOCHS, 0)
        early = epochs < self.epochs
        self._close(trial, "FINISHED", early)
        how = " (stopped early by the scheduler)" if early else ""
        print(f"[tune] trial {trial.trial_id} finished after {epochs} epochs{how}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED", False)
        print(f"[tune] trial {trial.trial_id} failed: see {trial.path}/error.txt", flush=True)

    def _close(self, trial, status: str, early: bool) -> None:
        registry = Registry(self.tracking_uri, self.artifact_root)
        run = find_trial_run(registry, self.job, trial.trial_id)
        if run is None or run.info.status != "RUNNING":
            return  # closed by its own driver
        result = final_result(trial.last_result, self.metric)
        registry.client.set_tag(run.info.run_id, RESULT_TAG, json.dumps(result))
        registry.client.set_tag(run.info.run_id, STOPPED_EARLY_TAG, str(early).lower())
        registry.client.set_terminated(run.info.run_id, status=status)


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


class PopulationBasedTraining(tune.schedulers.PopulationBasedTraining):
    """Ray's PBT, without its turn-taking when the whole population runs at once.

    Ray pauses a trial that reaches a perturbation while another waits (to start, or to
    restart from a clone), so that the waiting one gets a turn: time-sharing, for more
    trials than run at once. When they all run at once there is no turn to give, and each
    such pause would only restart the trial's Train run.
    """

    def __init__(self, *, time_shared: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.time_shared = time_shared

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.PAUSE and not self.time_shared:
            return TrialScheduler.CONTINUE
        return decision


def max_concurrent(job: TuneJobConfig, cfg: TrainConfig) -> int:
    """Trials that fit at once in the cluster's free resources (each trial's Train run
    takes ``num_workers`` CPUs, or GPUs), keeping ``DATA_CPUS`` free for data loading."""
    if job.max_concurrent:
        return job.max_concurrent
    free = ray.available_resources()
    need = ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu).total_resources
    fits = [
        int((free.get(key, 0) - (DATA_CPUS if key == "CPU" else 0)) // amount)
        for key, amount in need.items()
        if amount > 0
    ]
    return max(1, min([*fits, job.samples]))


def new_tuner(ctx: TrialContext, concurrency: int, callbacks: list | None = None) -> tune.Tuner:
    """A Tuner for a new experiment: the job's scheduler and search over its space.

    Args:
        concurrency: Trials at once (see ``max_concurrent``).
        callbacks: Further Tune callbacks (a benchmark's result log, say).
    """
    job, base = ctx.job, ctx.job.base()
    metric, mode = base.objective()
    if job.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr=EPOCHS,
            max_t=base.epochs,
            grace_period=job.grace_period,
            reduction_factor=job.reduction_factor,
        )
    elif job.scheduler == "pbt":
        scheduler = PopulationBasedTraining(
            time_shared=job.samples > concurrency,
            time_attr=EPOCHS,
            perturbation_interval=job.perturbation_interval,
            hyperparam_mutations=job.mutations(),
            custom_explore_fn=job.clamp,
        )
    else:
        scheduler = tune.schedulers.FIFOScheduler()
    if job.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(seed=job.seed)
    else:
        # Tune's max_concurrent_trials only limits a Searcher (Optuna): this one limits itself.
        search = tune.search.BasicVariantGenerator(
            random_state=job.seed, max_concurrent=concurrency
        )
    registry = ctx.registry()
    return tune.Tuner(
        trainable(ctx),
        param_space=job.param_space(),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=job.samples,
            scheduler=scheduler,
            search_alg=search,
            max_concurrent_trials=concurrency if job.search == "optuna" else None,
            trial_dirname_creator=_trial_dirname,
            # A trial's actor owns its Train run: a reused actor (PBT's restarts) would keep
            # the old run going.
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=job.name,
            storage_path=storage.join(ctx.settings.storage_root, "ray_tune"),
            callbacks=[
                TrialEvents(job, registry.tracking_uri, registry.artifact_root),
                *(callbacks or []),
            ],
            verbose=0,  # the job log gets TrialEvents' lines instead of Tune's tables
        ),
    )


def trainable(ctx: TrialContext):
    """``run_trial`` as Tune runs it: ``ctx`` bound, and the trial driver's resources."""
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), DRIVER_RESOURCES)


def trial_rows(results, job: TuneJobConfig) -> list[dict]:
    """One row per trial, best first: its values, status, epochs and objective."""
    metric, mode = job.base().objective()
    rows = []
    for result in results:
        history = result.metrics_dataframe
        last = result.metrics or {}
        scores = history[metric].dropna() if history is not None and metric in history else []
        rows.append(
            {
                "trial": last.get("trial_id") or Path(result.path).name.removeprefix("trial_"),
                "status": "ERROR" if result.error else "TERMINATED",
                **{key: _fmt(result.config.get(key)) for key in job.space},
                "epochs": int(last.get(EPOCHS, 0)),
                f"last_{metric}": round(float(last[metric]), 4) if metric in last else None,
                f"best_{metric}": round(float(max(scores) if mode == "max" else min(scores)), 4)
                if len(scores)
                else None,
            }
        )
    key = f"last_{metric}"
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (r[key] is None, sign * (r[key] or 0)))


def markdown_table(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def curves_png(results, job: TuneJobConfig, best_trial: str | None, path: Path) -> None:
    """Every trial's objective against its epochs; the registered trial drawn bold."""
    import matplotlib

    matplotlib.use("Agg")  # files only: jobs run without a display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    metric, mode = job.base().objective()
    fig, ax = plt.subplots(figsize=(8, 5))
    for result in results:
        history = result.metrics_dataframe
        if history is None or metric not in history or EPOCHS not in history:
            continue
        trial = (result.metrics or {}).get("trial_id", "?")
        best = trial == best_trial
        ax.plot(
            history[EPOCHS],
            history[metric],
            marker="o",
            linewidth=2.5 if best else 1,
            alpha=1 if best else 0.6,
            label=f"{trial} (registered)" if best else trial,
        )
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} ({mode})")
    ax.set_title(f"{job.name}: {job.scheduler} + {job.search}, {len(results)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results, ctx: TrialContext, best_trial: str | None) -> list[dict]:
    """Print the summary table; save it (CSV, Markdown) and the curves (PNG) next to the
    experiment and as artifacts of its MLflow run."""
    rows = trial_rows(results, ctx.job)
    table = markdown_table(rows)
    print("[tune] summary, best first:", flush=True)
    for line in table.splitlines():
        print(f"[tune] {line}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tune_summary.md").write_text(table)
        with (folder / "tune_summary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        curves_png(results, ctx.job, best_trial, folder / "tune_curves.png")
        for file in sorted(folder.iterdir()):
            storage.write_bytes(storage.join(ctx.experiment_uri, file.name), file.read_bytes())
        ctx.registry().client.log_artifacts(ctx.parent_run_id, str(folder))
    return rows


def publish_best(results, ctx: TrialContext):
    """Register the best trial's last checkpoint and make it the ``candidate``."""
    metric, mode = ctx.job.base().objective()
    best = results.get_best_result(metric, mode, scope="last")
    trial_id = best.metrics["trial_id"]
    cfg = ctx.job.trial(trial_id, best.config)
    registry = ctx.registry()
    fs, _ = storage.resolve(ctx.settings.storage_root)
    checkpoint = ray.train.Checkpoint(best.metrics[CHECKPOINT_PATH_KEY], filesystem=fs)
    model = load_model(cfg, checkpoint)
    run = find_trial_run(registry, ctx.job, trial_id)
    tags = {
        GIT_TAG: ctx.git_sha,
        "aimass.run_name": cfg.name,
        EXPERIMENT_TAG: ctx.job.name,
        TRIAL_TAG: trial_id,
    }
    version, test_metrics = publish(
        model,
        cfg.architecture,
        cfg.model_options,
        cfg.register_as,
        ctx.manifest,
        registry,
        run.info.run_id,
        tags,
    )
    reason = (
        f"tune {ctx.job.name}: best of {len(results)} trials by {metric} "
        f"({best.metrics[metric]:.4f}, trial {trial_id})"
    )
    registry.set_alias(version.name, CANDIDATE, version.version, reason=reason)
    registry.client.log_metric(ctx.parent_run_id, f"best_{metric}", best.metrics[metric])
    registry.client.set_tag(ctx.parent_run_id, "aimass.tune_best_trial", trial_id)
    return version, test_metrics, trial_id


def parse(argv: list[str] | None) -> tuple[TuneJobConfig, bool]:
    """The job's config from its flags; with ``--resume``, the experiment's saved one."""
    described = TuneJobConfig.model_fields
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(PRESETS), help=described["config"].description)
    parser.add_argument("--name", help="experiment name (default: <config>-tune-<timestamp>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=described["overrides"].description)  # fmt: skip
    parser.add_argument("--space", action="append", default=[], metavar="KEY=DOMAIN",
                        help="a search dimension, e.g. lr=loguniform:1e-4:1e-2 or "
                        "batch_size=choice:16,32,64; given, they replace the default space")  # fmt: skip
    for flag in ("samples", "grace_period", "perturbation_interval", "max_concurrent", "seed"):
        parser.add_argument(f"--{flag.replace('_', '-')}", type=int,
                            help=described[flag].description)  # fmt: skip
    parser.add_argument("--reduction-factor", type=float,
                        help=described["reduction_factor"].description)  # fmt: skip
    parser.add_argument("--scheduler", choices=("asha", "fifo", "pbt"),
                        help=described["scheduler"].description)  # fmt: skip
    parser.add_argument("--search", choices=("optuna", "random"),
                        help=described["search"].description)  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="continue the experiment --name after its driver died")  # fmt: skip
    args = vars(parser.parse_args(argv))
    resume, name = args.pop("resume"), args.pop("name")
    if resume:
        if not name:
            parser.error("--resume needs --name <experiment> (the name the first run used).")
        return load_spec(get_settings(), name)[0], True
    given = {k: v for k, v in args.items() if v not in (None, [])}
    given["config"] = config = given.get("config", "digits_cnn_smoke")
    given["name"] = name or f"{config}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    given["overrides"] = tuple(given.pop("set", ()))
    try:
        if "space" in given:
            given["space"] = {
                key: Param.parse(domain)
                for key, _, domain in (pair.partition("=") for pair in given["space"])
            }
        return TuneJobConfig(**given), False
    except ValueError as err:
        parser.error(str(err))


def load_spec(settings: Settings, name: str) -> tuple[TuneJobConfig, str]:
    """The saved config of experiment ``name`` and its MLflow run id."""
    uri = storage.join(experiment_uri(settings, name), SPEC_FILE)
    if not storage.exists(uri):
        raise SystemExit(f"No experiment {name!r} to resume ({uri} is missing); check --name.")
    spec = json.loads(storage.read_bytes(uri))
    return TuneJobConfig.model_validate(spec["job"]), spec["parent_run_id"]


def start(job: TuneJobConfig, registry: Registry, settings: Settings) -> str:
    """Create the experiment's MLflow run and save what a resume needs; its run id."""
    uri = experiment_uri(settings, job.name)
    if storage.exists(storage.join(uri, SPEC_FILE)):
        raise SystemExit(
            f"Experiment {job.name!r} exists at {uri}: add --resume to continue it, or pick "
            "another --name."
        )
    tags = {EXPERIMENT_TAG: job.name, GIT_TAG: git_sha(), "aimass.run_name": job.name}
    run = registry.client.create_run(
        registry.experiment(job.base().register_as), run_name=job.name, tags=tags
    )
    params = [MlflowParam(k, str(v)) for k, v in job.model_dump(mode="json").items()]
    registry.client.log_batch(run.info.run_id, params=params)
    spec = {"job": job.model_dump(mode="json"), "parent_run_id": run.info.run_id}
    storage.write_bytes(storage.join(uri, SPEC_FILE), json.dumps(spec, indent=1).encode())
    return run.info.run_id


def restore(ctx: TrialContext) -> tune.Tuner:
    """The interrupted experiment, resumed: finished trials are kept, not run again."""
    analysis = tune.ExperimentAnalysis(ctx.experiment_uri)
    statuses = [trial.status for trial in analysis.trials]
    print(
        f"[tune] resuming {ctx.job.name}: {statuses.count('TERMINATED')} finished trials "
        f"kept, {len(statuses) - statuses.count('TERMINATED')} to continue, "
        f"{ctx.job.samples - len(statuses)} not started yet",
        flush=True,
    )
    ctx.registry().client.update_run(ctx.parent_run_id, status="RUNNING")
    return tune.Tuner.restore(ctx.experiment_uri, trainable(ctx), resume_errored=True)


def main(argv: list[str] | None = None) -> None:
    job, resume = parse(argv)
    settings = get_settings()
    base = job.base()
    manifest = read_manifest(dataset_uri(settings.storage_root, base.dataset))
    registry = Registry.from_settings(settings)
    ray.init()
    parent = load_spec(settings, job.name)[1] if resume else start(job, registry, settings)
    if resume and registry.client.get_run(parent).info.status == "FINISHED":
        raise SystemExit(
            f"Experiment {job.name!r} already finished (MLflow run {parent}); nothing to resume."
        )
    ctx = TrialContext(job, settings, manifest, parent, git_sha())
    try:
        if resume:
            tuner = restore(ctx)
        else:
            concurrency = max_concurrent(job, base)
            print(
                f"[tune] {job.name} (mlflow {parent}): {job.samples} trials of {job.config}, "
                f"{job.scheduler} + {job.search}, {concurrency} at a time, "
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
            tuner = new_tuner(ctx, concurrency)
        results = tuner.fit()
        if all(result.error for result in results):
            raise SystemExit(f"[tune] every trial failed; the first: {results[0].error}")
        version, test_metrics, best_trial = publish_best(results, ctx)
        write_report(results, ctx, best_trial)
    except BaseException:
        registry.client.set_terminated(parent, status="FAILED")
        raise
    registry.client.set_terminated(parent, status="FINISHED")
    metric = "accuracy" if "accuracy" in test_metrics else next(iter(test_metrics))
    print(
        f"[tune] registered {version.name} version {version.version} from trial {best_trial} "
        f"(test {metric} {test_metrics[metric]:.4f}); alias {CANDIDATE} -> "
        f"{version.name} version {version.version}",
        flush=True,
    )


if __name__ == "__main__":
    main()
