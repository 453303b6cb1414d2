"""Ray Train around the training function: datasets, scaling, checkpoints, retries."""

from __future__ import annotations

from pathlib import Path

import ray
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from actors import shard_store
from cluster import storage
from cluster.settings import Settings
from jobs._private.loop_config import LOOP_KEY, LoopConfig
from jobs._private.train_loop import WEIGHTS, train_func
from jobs.configs import TrainConfig
from models.dataset import Manifest
from models.refs import ModelVersionInfo
from models.registry import Registry
from models.weights import load_weights
from models.zoo import build_model

READ_TASK_CPUS = 0.25


def datasets(cfg: TrainConfig, manifest: Manifest) -> dict[str, ray.data.Dataset]:
    context = ray.data.DataContext.get_current()  # each dataset copies it when created
    context.enable_progress_bars = False  # job logs are for people: the loop's lines only
    # Ray 2.60's default Parquet reader starts 32 footer-reading actors each time the plan
    # runs, i.e. every epoch when streaming: 50+ s per epoch here before the first batch
    # (bench.ingest_throughput). The V1 reader lists the manifest's files once.
    context.use_datasource_v2 = False
    # Reading a shard is I/O and decoding, far from a core: a quarter CPU per read task keeps
    # the pipeline schedulable when the training workers and a Serve deployment already
    # hold nearly every CPU of the cluster (with the default 1 CPU it waited forever).
    placed = {"label_selector": cfg.placement()} if cfg.datacenter else None
    out = {
        split: ray.data.read_parquet(
            manifest.shard_uris(split), num_cpus=READ_TASK_CPUS, ray_remote_args=placed
        )
        for split in ("train", "val")
    }
    return {k: ds.materialize() for k, ds in out.items()} if cfg.cache_data else out


def make_trainer(
    cfg: TrainConfig,
    manifest: Manifest,
    settings: Settings,
    run_id: str | None,
    *,
    storage_path: str | None = None,
    callbacks: list | None = None,
    teacher: ModelVersionInfo | None = None,
    init_checkpoint: Checkpoint | None = None,
    shard_group: str | None = None,
) -> TorchTrainer:
    """A TorchTrainer running ``train_func`` for ``cfg`` on ``cfg.num_workers`` workers.

    The run lives at ``<storage_path>/<cfg.name>`` (default storage: ``<root>/ray_train``);
    fitting a trainer whose run folder already holds checkpoints resumes from the latest.

    Args:
        run_id: The MLflow run the loop logs epoch metrics to (rank 0), or None.
        callbacks: Ray Train callbacks, e.g. Tune's ``TuneReportCallback`` in a trial.
        teacher: Distil from this version's soft targets (``LoopConfig.teacher``).
        init_checkpoint: Start from this checkpoint unless the run has its own
            (``LoopConfig.init_checkpoint``).
        shard_group: Workers read from this running ShardStore group instead of Ray Data.
    """
    if cfg.data_source == "shard_store" and shard_group is None:
        raise ValueError(
            f"{cfg.name}: data_source=shard_store needs a running group (jobs.train's fit "
            "starts one); tuning trials read through Ray Data: set data_source=ray_data."
        )
    registry = Registry.from_settings(settings)
    loop = LoopConfig(
        train=cfg,
        steps_per_epoch=manifest.rows("train") // cfg.num_workers // cfg.batch_size,
        tracking_uri=registry.tracking_uri,
        artifact_root=registry.artifact_root,
        mlflow_run_id=run_id,
        teacher=teacher,
        init_checkpoint=init_checkpoint,
        shard_group=shard_group,
    )
    return TorchTrainer(
        train_func,
        train_loop_config={LOOP_KEY: loop},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, label_selector=cfg.placement()
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage_path or storage.join(settings.storage_root, "ray_train"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        datasets=None if shard_group else datasets(cfg, manifest),
    )


def load_model(cfg: TrainConfig, checkpoint: Checkpoint) -> nn.Module:
    """The trained model from a run's checkpoint (the full weights rank 0 wrote)."""
    with checkpoint.as_directory() as folder:
        return load_weights(
            build_model(cfg.architecture, **cfg.model_options), Path(folder) / WEIGHTS
        )


def fit(
    cfg: TrainConfig,
    manifest: Manifest,
    settings: Settings,
    run_id: str,
    *,
    teacher: ModelVersionInfo | None = None,
) -> nn.Module:
    """Run the training function on ``cfg.num_workers`` Ray Train workers; return the model.

    With ``data_source=shard_store`` the run starts its own ShardStore group (named after
    the run, inside ``cfg.datacenter`` when it has one) before the workers and stops it
    after them.
    """
    if cfg.data_source != "shard_store":
        trainer = make_trainer(cfg, manifest, settings, run_id, teacher=teacher)
        return load_model(cfg, trainer.fit().checkpoint)
    with shard_store.running(
        manifest,
        group=cfg.name,
        splits=("train", "val"),
        factor=cfg.shard_replicas,
        datacenter=cfg.datacenter,
    ) as group:
        trainer = make_trainer(cfg, manifest, settings, run_id, teacher=teacher, shard_group=group)
        return load_model(cfg, trainer.fit().checkpoint)
