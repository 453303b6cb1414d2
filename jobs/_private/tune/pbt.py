"""Population based training's plumbing: each epoch's checkpoint goes to Tune, and a trial
that Tune restarts from one (another trial's, when PBT exploits it) starts a new Train run
from it.

``TuneReportCallback`` passes metrics only, and PBT clones a trial from the checkpoint Tune
holds for it: ``fit_reporting_checkpoints`` reports both, from the trial's thread.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import replace

import ray
from ray import tune
from ray.train import UserCallback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.schedulers import TrialScheduler
from ray.util.queue import Queue

from jobs._private.tune.context import EPOCHS, TrialContext, fmt, with_epochs
from jobs._private.tune.tracking import tag_start
from jobs.configs import TrainConfig


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


class CheckpointReport(UserCallback):
    """PBT's report callback: each epoch's metrics (with ``epochs_done``) *and checkpoint*
    go to the trial's driver (``fit_reporting_checkpoints``), which reports both to Tune.
    The queue holds one epoch: the Train run waits for its driver."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put((with_epochs(metrics[0]), checkpoint))


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
    print(describe_start(trial_id, donor, epoch, meta["config"], config), flush=True)
    started = {"trial": donor, "epoch": epoch, "values": {k: config[k] for k in ctx.job.space}}
    tag_start(ctx, run_id, started)
    return replace(cfg, name=f"{cfg.name}-from-{donor}-e{epoch}-{uuid.uuid4().hex[:6]}")


def describe_start(trial_id: str, donor: str, epoch: int, was: dict, now: dict) -> str:
    """The job log's line for a trial restarting from ``donor``'s checkpoint of ``epoch``:
    its own (a pause or a driver restart), or another's with the values mutated."""
    if donor == trial_id:
        return f"[tune] trial {trial_id} resumes from its checkpoint of epoch {epoch}"
    changes = ", ".join(f"{key} {fmt(value)} -> {fmt(now[key])}" for key, value in was.items())
    return f"[tune] trial {trial_id} exploits {donor}'s checkpoint of epoch {epoch}, {changes}"


def fit_reporting_checkpoints(
    trainer: Callable[[list], ray.train.torch.TorchTrainer], meta: dict, epochs: int
) -> ray.train.Result:
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
        tune.report(metrics, checkpoint=for_tune(metrics, saved, meta, epochs))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def for_tune(metrics: dict, saved, meta: dict, epochs: int) -> tune.Checkpoint | None:
    """The checkpoint to report with ``metrics`` (adding its path to them, as
    ``TuneReportCallback`` does, for publishing): None for the run's last epoch."""
    if saved is None:
        return None
    metrics[CHECKPOINT_PATH_KEY] = saved.path
    if metrics[EPOCHS] >= epochs:
        return None
    # Tune copies it into the trial's folder: the Train run keeps only its last two, and
    # PBT may clone this one later.
    checkpoint = tune.Checkpoint(saved.path, filesystem=saved.filesystem)
    checkpoint.set_metadata({**meta, "epoch": metrics[EPOCHS]})
    return checkpoint
