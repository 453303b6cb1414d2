"""One trial: a driver function that fits a Ray Train run of the preset with the trial's
sampled values and forwards each epoch's metrics to Tune (the Ray 2.60 pattern)."""

from __future__ import annotations

from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from cluster import storage
from jobs._private.trainer import make_trainer
from jobs._private.tune.context import REPEATED, TrialContext, with_epochs
from jobs._private.tune.pbt import fit_reporting_checkpoints, start_from
from jobs._private.tune.tracking import final_result, finish_trial_run, open_trial_run

# A trial's driver only waits on its Train run, so it holds no CPU; a placement group
# bundle cannot be empty, hence a token of memory.
DRIVER_RESOURCES = {"memory": 1}


class EpochReport(TuneReportCallback):
    """Tune's report callback, adding ``epochs_done`` to each report (see ``EPOCHS``)."""

    def after_report(self, run_context, metrics, checkpoint):
        super().after_report(run_context, [with_epochs(metrics[0]), *metrics[1:]], checkpoint)


def trainable(ctx: TrialContext):
    """``run_trial`` as Tune runs it: ``ctx`` bound, and the trial driver's resources."""
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), DRIVER_RESOURCES)


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
    if (checkpoint := tune.get_checkpoint()) is not None:
        cfg = start_from(checkpoint, trial_id, config, cfg, ctx, run_id)

    def trainer(callbacks: list):
        return make_trainer(
            cfg,
            ctx.manifest,
            ctx.settings,
            run_id,
            storage_path=storage.join(ctx.experiment_uri, "train"),
            callbacks=callbacks,
            init_checkpoint=checkpoint,
        )

    if ctx.job.scheduler == "pbt":
        meta = {"trial": trial_id, "config": {key: config[key] for key in ctx.job.space}}
        result = fit_reporting_checkpoints(trainer, meta, cfg.epochs)
    else:
        result = trainer([EpochReport()]).fit()
    # result.metrics: those of its latest checkpoint, i.e. its last epoch
    last = {**with_epochs(result.metrics), CHECKPOINT_PATH_KEY: result.checkpoint.path}
    # Only a normal end is recorded here: a failure is recorded by the driver (TrialEvents),
    # because a trial that Tune stops, or whose driver dies, fails here on its way out.
    summary = final_result(last, cfg.objective()[0])
    finish_trial_run(ctx, run_id, summary)
    # Also the trial's final result: a Train run resumed at its last checkpoint (it ended
    # just as the driver died) trains and reports nothing, and Tune refuses a trial whose
    # results lack the metric. When epochs were reported, this repeats the last one.
    return {**summary, REPEATED: True}
