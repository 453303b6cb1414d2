"""Train a model with Ray Train + DeepSpeed, then evaluate, export, register and gate it.

Submit it to the cluster (run from the repository root):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train --config digits_cnn

``--set key=value`` overrides a field of the preset (``--set epochs=5 --set zero_stage=1``).
To record the commit in the model's lineage, add
``--runtime-env-json '{"env_vars": {"AIMASS_GIT_SHA": "'$(git rev-parse HEAD)'"}}'``.
``--name`` names the run; submitting again with the same name resumes it from its last
checkpoint instead of starting over.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cluster import storage
from cluster.settings import Settings, get_settings
from jobs._private.publish import publish
from jobs._private.train_loop import WEIGHTS, train_func
from jobs.configs import PRESETS, TrainConfig, preset
from jobs.dataset import Manifest, dataset_uri, read_manifest
from models.registry import Registry


def datasets(cfg: TrainConfig, manifest: Manifest) -> dict[str, ray.data.Dataset]:
    # Job logs are for people: one progress line per epoch from the loop, no data bars.
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = {split: ray.data.read_parquet(manifest.shard_uris(split)) for split in ("train", "val")}
    return {k: ds.materialize() for k, ds in out.items()} if cfg.cache_data else out


def fit(cfg: TrainConfig, manifest: Manifest, settings: Settings, run_id: str):
    trainer = TorchTrainer(
        train_func,
        train_loop_config={
            "train": cfg.to_dict(),
            # drop_last in the loop: each rank takes this many steps per epoch.
            "steps_per_epoch": manifest.rows("train") // cfg.num_workers // cfg.batch_size,
            "mlflow_run_id": run_id,
            "tracking_uri": settings.mlflow_uri,
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage.join(settings.storage_root, "ray_train"),
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets(cfg, manifest),
    )
    return trainer.fit()


def git_sha() -> str:
    """The code's commit: AIMASS_GIT_SHA when the submitter set it (Ray leaves .git out of
    the uploaded working dir), else the working dir's own git, else "unknown"."""
    if sha := os.environ.get("AIMASS_GIT_SHA"):
        return sha
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="digits_cnn", choices=sorted(PRESETS))
    parser.add_argument("--name", help="run name (default: <config>-<timestamp>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        name = args.name or f"{args.config}-{time.strftime('%Y%m%d-%H%M%S')}"
        cfg = preset(args.config).with_overrides([*args.set, f"name={name}"])
    except ValueError as err:
        parser.error(str(err))
    settings = get_settings()
    manifest = read_manifest(dataset_uri(settings.storage_root, cfg.dataset))
    registry = Registry(settings.mlflow_uri, storage.join(settings.storage_root, "mlflow"))
    sha = git_sha()
    run = registry.client.create_run(
        registry.experiment(cfg.register_as),
        run_name=cfg.name,
        tags={"aimass.data_manifest_sha256": manifest.sha256, "aimass.git_sha": sha},
    )
    run_id = run.info.run_id
    for key, value in cfg.to_dict().items():
        registry.client.log_param(run_id, key, value)
    print(
        f"[train] run {cfg.name} (mlflow {run_id}): {cfg.num_workers} workers, ZeRO-{cfg.zero_stage}, "
        f"{manifest.rows('train')} train rows",
        flush=True,
    )
    try:
        t0 = time.monotonic()
        result = fit(cfg, manifest, settings, run_id)
        t1 = time.monotonic()
        print(
            f"[train] training finished in {t1 - t0:.0f} s; evaluating and registering", flush=True
        )
        with result.checkpoint.as_directory() as folder:
            published = publish(cfg, Path(folder) / WEIGHTS, manifest, registry, run_id, sha)
        print(f"[train] published in {time.monotonic() - t1:.0f} s", flush=True)
    except BaseException:
        registry.client.set_terminated(run_id, status="FAILED")
        raise
    registry.client.set_terminated(run_id, status="FINISHED")
    v = published.version
    print(
        f"[train] registered {v.name} version {v.version}; test accuracy "
        f"{published.metrics['accuracy']:.4f}; {published.gate_message}",
        flush=True,
    )
    if published.champion:
        print(f"[train] alias champion -> {v.name} version {v.version}", flush=True)


if __name__ == "__main__":
    main()
