"""What the training function receives on every Ray Train worker, typed."""

from __future__ import annotations

from dataclasses import dataclass

from ray.train import Checkpoint

from jobs.configs import TrainConfig
from models.refs import ModelVersionInfo

LOOP_KEY = "loop"
"""The one key of the trainer's ``train_loop_config``. Ray Train keeps that config as a dict
(its run state, shown in the dashboard, validates it as one), so the typed config travels
as its value; Ray pickles it to each worker."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopConfig:
    """One Train run's loop: the training config and where the run reports and starts."""

    train: TrainConfig
    steps_per_epoch: int
    """Micro-batches each rank takes per epoch: train rows // workers // batch size (the
    loop drops the last partial batch, so that every rank takes as many steps)."""
    tracking_uri: str
    """MLflow tracking URI, for the epoch metrics and a teacher's package."""
    artifact_root: str
    """The registry's artifact root (``Registry``), for fetching a teacher's package."""
    mlflow_run_id: str | None = None
    """The run rank 0 logs each epoch's metrics to; None logs none."""
    teacher: ModelVersionInfo | None = None
    """Distillation: the registered version whose ONNX logits are the soft targets."""
    shard_group: str | None = None
    """The ShardStore group the workers read from (``data_source=shard_store``); None:
    Ray Data, the trainer's datasets."""
    init_checkpoint: Checkpoint | None = None
    """The checkpoint a run without one of its own starts from: a tuning trial that PBT
    restarted from another trial's checkpoint."""
