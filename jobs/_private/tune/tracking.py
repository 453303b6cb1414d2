"""The experiment's MLflow bookkeeping: its run, one nested run per trial, the saved spec
that ``--resume`` reads, and the best trial's registration.

Runs outlive the driver: a resumed experiment reopens its run, and a trial that continues
reopens the run it had (one run per trial, ever). A finished trial's run keeps its final
result (``RESULT_TAG``), which Tune gets again if the driver died before recording it.
"""

from __future__ import annotations

import json

import ray
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from cluster import storage
from cluster.provenance import git_sha
from cluster.settings import Settings
from jobs._private import runs
from jobs._private.publish import publish
from jobs._private.trainer import load_model
from jobs._private.tune.context import EPOCHS, TrialContext, experiment_uri
from jobs.configs import TrainConfig, TuneJobConfig
from models.refs import CANDIDATE, GIT_TAG, ModelVersionInfo
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
BEST_TAG = "aimass.tune_best_trial"
SPEC_FILE = "aimass_tune.json"


def start_experiment(job: TuneJobConfig, registry: Registry, settings: Settings) -> str:
    """Create the experiment's MLflow run and save what a resume needs; its run id."""
    uri = experiment_uri(settings, job.name)
    if storage.exists(storage.join(uri, SPEC_FILE)):
        raise SystemExit(
            f"Experiment {job.name!r} exists at {uri}: add --resume to continue it, or pick "
            "another --name."
        )
    tags = {EXPERIMENT_TAG: job.name, GIT_TAG: git_sha(), "aimass.run_name": job.name}
    params = job.model_dump(mode="json")
    run_id = runs.create_run(registry, job.base().register_as, job.name, params, tags)
    spec = {"job": params, "parent_run_id": run_id}
    storage.write_bytes(storage.join(uri, SPEC_FILE), json.dumps(spec, indent=1).encode())
    return run_id


def load_spec(settings: Settings, name: str) -> tuple[TuneJobConfig, str]:
    """The saved config of experiment ``name`` and its MLflow run id."""
    uri = storage.join(experiment_uri(settings, name), SPEC_FILE)
    if not storage.exists(uri):
        raise SystemExit(f"No experiment {name!r} to resume ({uri} is missing); check --name.")
    spec = json.loads(storage.read_bytes(uri))
    return TuneJobConfig.model_validate(spec["job"]), spec["parent_run_id"]


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

    A trial that resumes after the driver restarted reopens the run it had, so its epochs
    continue in the same place.
    """
    registry = ctx.registry()
    run = find_trial_run(registry, ctx.job, trial_id)
    if run is not None:
        if run.info.status == "FINISHED":
            return run.info.run_id, json.loads(run.data.tags[RESULT_TAG])
        runs.reopen(registry, run.info.run_id)
        return run.info.run_id, None
    tags = {
        EXPERIMENT_TAG: ctx.job.name,
        TRIAL_TAG: trial_id,
        GIT_TAG: ctx.git_sha,
        "aimass.run_name": cfg.name,
    }
    run_id = runs.create_run(
        registry, cfg.register_as, cfg.name, cfg.to_dict(), tags, parent_run_id=ctx.parent_run_id
    )
    return run_id, None


def tag_start(ctx: TrialContext, run_id: str, started: dict) -> None:
    """Record the checkpoint the trial's new Train run starts from (``START_TAG``)."""
    ctx.registry().client.set_tag(run_id, START_TAG, json.dumps(started))


def finish_trial_run(ctx: TrialContext, run_id: str, summary: dict) -> None:
    """The trial's own end: its final result kept with its run, the run FINISHED."""
    registry = ctx.registry()
    registry.client.set_tag(run_id, RESULT_TAG, json.dumps(summary))
    runs.close(registry, run_id, "FINISHED")


def close_trial_run(
    registry: Registry, job: TuneJobConfig, trial, status: runs.Status, early: bool
) -> None:
    """End the run of a trial that did not close it itself, with its last result: Tune
    stopped it (``early`` by the scheduler, or at ``max_t``) before it could, or it failed."""
    run = find_trial_run(registry, job, trial.trial_id)
    if run is None or run.info.status != "RUNNING":
        return  # closed by its own driver
    result = final_result(trial.last_result, job.base().objective()[0])
    registry.client.set_tag(run.info.run_id, RESULT_TAG, json.dumps(result))
    registry.client.set_tag(run.info.run_id, STOPPED_EARLY_TAG, str(early).lower())
    runs.close(registry, run.info.run_id, status)


def publish_best(results, ctx: TrialContext) -> tuple[ModelVersionInfo, dict, str]:
    """Register the best trial's last checkpoint and make it the ``candidate``; the version,
    its test metrics and the trial's id."""
    metric, mode = ctx.job.base().objective()
    best = results.get_best_result(metric, mode, scope="last")
    trial_id = best.metrics["trial_id"]
    cfg = ctx.job.trial(trial_id, best.config)
    registry = ctx.registry()
    fs, _ = storage.resolve(ctx.settings.storage_root)
    checkpoint = ray.train.Checkpoint(best.metrics[CHECKPOINT_PATH_KEY], filesystem=fs)
    run = find_trial_run(registry, ctx.job, trial_id)
    tags = {
        GIT_TAG: ctx.git_sha,
        "aimass.run_name": cfg.name,
        EXPERIMENT_TAG: ctx.job.name,
        TRIAL_TAG: trial_id,
    }
    version, test_metrics = publish(
        load_model(cfg, checkpoint),
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
    registry.client.set_tag(ctx.parent_run_id, BEST_TAG, trial_id)
    return version, test_metrics, trial_id
