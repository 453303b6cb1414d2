"""The Tuner of an experiment: its scheduler and search over the job's space, its callbacks
(progress lines, the closing of trials' runs), and its restore after the driver died."""

from __future__ import annotations

import ray
from ray import tune
from ray.train import ScalingConfig

from cluster import storage
from jobs._private import runs
from jobs._private.tune.context import EPOCHS, REPEATED, TrialContext, fmt
from jobs._private.tune.pbt import PopulationBasedTraining
from jobs._private.tune.tracking import close_trial_run
from jobs._private.tune.trial import trainable
from jobs.configs import TrainConfig, TuneJobConfig
from models.registry import Registry

DATA_CPUS = 1
"""CPUs left free for Ray Data's read tasks when trials start (each reads its shards)."""


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
    return max(1, min([*fits, job.trials]))


def scheduler(job: TuneJobConfig, concurrency: int) -> tune.schedulers.TrialScheduler:
    """``job.scheduler`` over epochs done (``EPOCHS``): ASHA, PBT or FIFO."""
    base = job.base()
    if job.scheduler == "asha":
        return tune.schedulers.ASHAScheduler(
            time_attr=EPOCHS,
            max_t=base.epochs,
            grace_period=job.grace_period,
            reduction_factor=job.reduction_factor,
        )
    if job.scheduler == "pbt":
        return PopulationBasedTraining(
            time_shared=job.samples > concurrency,
            time_attr=EPOCHS,
            perturbation_interval=job.perturbation_interval,
            hyperparam_mutations=job.mutations(),
            custom_explore_fn=job.clamp,
        )
    return tune.schedulers.FIFOScheduler()


def search(job: TuneJobConfig, concurrency: int):
    """``job.search``: Optuna's TPE, Optuna's NSGA-II (evolution), or Tune's variant generator
    (random sampling, or the grid ``job.param_space()`` spells) limited to ``concurrency``
    trials."""
    if job.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=job.seed)
    if job.search == "evolution":
        from optuna.samplers import NSGAIISampler
        from ray.tune.search.optuna import OptunaSearch

        # NSGA-II, not CMA-ES: CMA-ES samples categorical dimensions (the default space's
        # batch_size) at random, outside its model, and needs the cmaes package; NSGA-II
        # breeds every kind of dimension. With one objective its selection keeps the best.
        return OptunaSearch(sampler=NSGAIISampler(population_size=job.population, seed=job.seed))
    # Tune's max_concurrent_trials only limits a Searcher (Optuna): this one limits itself.
    return tune.search.BasicVariantGenerator(random_state=job.seed, max_concurrent=concurrency)


def new_tuner(ctx: TrialContext, concurrency: int, callbacks: list | None = None) -> tune.Tuner:
    """A Tuner for a new experiment: the job's scheduler and search over its space.

    Args:
        concurrency: Trials at once (see ``max_concurrent``).
        callbacks: Further Tune callbacks (a benchmark's result log, say).
    """
    job = ctx.job
    metric, mode = job.base().objective()
    registry = ctx.registry()
    search_alg = search(job, concurrency)
    limits_itself = isinstance(search_alg, tune.search.BasicVariantGenerator)
    return tune.Tuner(
        trainable(ctx),
        param_space=job.param_space(),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=job.samples,  # under grid: runs of the whole grid
            scheduler=scheduler(job, concurrency),
            search_alg=search_alg,
            max_concurrent_trials=None if limits_itself else concurrency,
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


def restore(ctx: TrialContext) -> tune.Tuner:
    """The interrupted experiment, resumed: finished trials are kept, not run again."""
    analysis = tune.ExperimentAnalysis(ctx.experiment_uri)
    statuses = [trial.status for trial in analysis.trials]
    print(
        f"[tune] resuming {ctx.job.name}: {statuses.count('TERMINATED')} finished trials "
        f"kept, {len(statuses) - statuses.count('TERMINATED')} to continue, "
        f"{ctx.job.trials - len(statuses)} not started yet",
        flush=True,
    )
    runs.reopen(ctx.registry(), ctx.parent_run_id)
    return tune.Tuner.restore(ctx.experiment_uri, trainable(ctx), resume_errored=True)


class TrialEvents(tune.Callback):
    """Progress lines for the job log, and the end of trials' MLflow runs that the trial
    itself did not close: a trial Tune stopped (early, or at ``max_t``) is ended before it
    can, and a failed one is recorded here."""

    def __init__(self, job: TuneJobConfig, tracking_uri: str, artifact_root: str) -> None:
        self.job, self.tracking_uri, self.artifact_root = job, tracking_uri, artifact_root
        self.metric, _ = job.base().objective()
        self.epochs = job.base().epochs

    def on_trial_start(self, iteration, trials, trial, **info):
        values = ", ".join(f"{k}={fmt(v)}" for k, v in trial.config.items())
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
        close_trial_run(self._registry(), self.job, trial, "FINISHED", early)
        how = " (stopped early by the scheduler)" if early else ""
        print(f"[tune] trial {trial.trial_id} finished after {epochs} epochs{how}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        close_trial_run(self._registry(), self.job, trial, "FAILED", False)
        print(f"[tune] trial {trial.trial_id} failed: see {trial.path}/error.txt", flush=True)

    def _registry(self) -> Registry:
        # Built per event from plain strings: Tune keeps (and may copy) its callbacks.
        return Registry(self.tracking_uri, self.artifact_root)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
