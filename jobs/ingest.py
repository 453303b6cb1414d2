"""Ingest a dataset into Parquet shards plus a manifest on the storage URI.

Submit it to the cluster (run from the repository root):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.ingest --dataset digits

The split is stratified and deterministic for a given ``--seed``: running it twice writes
the same shards and the same manifest hash.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from cluster.settings import get_settings
from jobs._private.cli import parse_config
from jobs.dataset import Manifest, dataset_uri, write_dataset


class IngestConfig(BaseModel):
    """What to ingest and how to split it."""

    dataset: str = Field("digits", pattern="^digits$", description="Source dataset name.")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of rows for validation.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of rows held out for test.")
    shards: int = Field(2, ge=1, le=1024, description="Parquet shards per split.")
    seed: int = Field(0, description="Seed of the stratified split.")


def stratified_splits(
    x: np.ndarray, y: np.ndarray, cfg: IngestConfig
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    idx = np.arange(len(y))
    rest, test = train_test_split(
        idx, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed
    )
    val_share = cfg.val_fraction / (1 - cfg.test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, stratify=y[rest], random_state=cfg.seed
    )
    return {name: (x[i], y[i]) for name, i in (("train", train), ("val", val), ("test", test))}


def ingest(cfg: IngestConfig, storage_root: str) -> Manifest:
    digits = load_digits()  # bundled with scikit-learn: 1,797 8x8 images, pixel counts 0..16
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    return write_dataset(
        dataset_uri(storage_root, cfg.dataset),
        cfg.dataset,
        stratified_splits(x, y, cfg),
        cfg.shards,
        extra={"num_classes": 10, "seed": cfg.seed, "source": "sklearn.datasets.load_digits"},
    )


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(IngestConfig, __doc__.split("\n")[0], argv)
    manifest = ingest(cfg, get_settings().storage_root)
    for split in ("train", "val", "test"):
        print(
            f"[ingest] {split}: {manifest.rows(split)} rows in {len(manifest.shard_uris(split))} shards"
        )
    print(f"[ingest] manifest {manifest.root}/manifest.json sha256={manifest.sha256}")


if __name__ == "__main__":
    main()
