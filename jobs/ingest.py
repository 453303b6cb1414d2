"""Ingest a dataset into Parquet shards plus a manifest on the storage URI.

Submit it to the cluster (run from the repository root):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.ingest --dataset digits
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.ingest --dataset python_stdlib

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.ingest --dataset synthetic --rows 10000000 --shards 64

``digits``: scikit-learn's bundled 8x8 digits, split stratified by class.
``python_stdlib``: the running Python's standard library sources as byte-level tokens, in
sequences of ``--block-size`` + 1 tokens; files go to train/val/test by a hash of their
path, so no file straddles two splits, and each split's sequences are shuffled (seeded), so
any prefix of a split samples all its files. ``synthetic``: ``--rows`` generated rows shaped
like digits (64 float32 features around one of 10 class prototypes, an int64 label),
written shard by shard in chunks of ``CHUNK_ROWS``, so memory stays bounded at any size.
All are deterministic: running twice writes the
same shards and the same manifest hash.

New data a model is refreshed on arrives as Parquet: ``--source URI`` (a file or a folder
of them, local or on the storage's filesystems) with a ``features`` column (lists of one
length) and an integer ``label``, ingested under ``--dataset NAME`` (any name) and split
like digits:

    ray job submit ... -- python -m jobs.ingest --dataset digits_2026_12 --source s3://bucket/new/
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pydantic import BaseModel, Field, model_validator
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from cluster import storage
from cluster.settings import get_settings
from jobs._private.cli import parse_config
from models.dataset import (
    DATASET_NAME,
    FEATURES,
    LABEL,
    Manifest,
    dataset_uri,
    to_table,
    token_table,
    write_dataset,
    write_manifest,
    write_streamed_shard,
    write_tables,
)

CHUNK_ROWS = 65_536
"""Synthetic: rows generated and written at a time (~17 MiB of features)."""
WIDTH = 64
"""Synthetic: features per row, as digits has."""
CLASSES = 10
BUILT_IN = ("digits", "python_stdlib", "synthetic")


class IngestConfig(BaseModel):
    """What to ingest and how to split it."""

    dataset: str = Field(
        "digits",
        pattern=DATASET_NAME,
        description="digits | python_stdlib | synthetic, or the name of a --source's data",
    )
    source: str | None = Field(
        None,
        description="Parquet file or folder URI of new labelled data (columns features, "
        "label), ingested under --dataset and split like digits.",
    )
    rows: int = Field(100_000, ge=100, description="Synthetic: rows in all splits together.")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of rows for validation.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of rows held out for test.")
    shards: int = Field(2, ge=1, le=1024, description="Parquet shards per split.")
    seed: int = Field(0, description="Seed of the stratified split.")
    block_size: int = Field(128, ge=8, le=8192, description="Text: tokens per sequence.")
    max_bytes: int = Field(4_000_000, ge=10_000, description="Text: corpus size cap in bytes.")

    @model_validator(mode="after")
    def _known(self) -> IngestConfig:
        if self.source is None and self.dataset not in BUILT_IN:
            raise ValueError(
                f"dataset {self.dataset!r} is not built in ({', '.join(BUILT_IN)}): "
                "give --source with its Parquet files"
            )
        if self.source is not None and self.dataset in BUILT_IN:
            raise ValueError(f"dataset {self.dataset!r} is built in: name the new data otherwise")
        return self


class SourceError(ValueError):
    """New data that cannot be ingested (missing, or not features + label)."""


def read_source(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [rows, width], labels int64) of the Parquet file(s) at ``uri``.

    Raises:
        SourceError: Nothing there, a column missing, rows of different widths, labels
            that are not class numbers 0, 1, ...
    """
    fs, path = storage.resolve(uri)
    try:
        table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    except (FileNotFoundError, pa.ArrowInvalid) as err:
        raise SourceError(f"no Parquet data at {uri}: {err}") from None
    missing = {FEATURES, LABEL} - set(table.column_names)
    if missing:
        raise SourceError(
            f"{uri} has columns {table.column_names}; {sorted(missing)} missing "
            f"({FEATURES!r}: a list of numbers per row, {LABEL!r}: its class)"
        )
    if table.num_rows < 50:
        raise SourceError(f"{uri} has {table.num_rows} rows: at least 50 are needed to split")
    x = _feature_matrix(table.column(FEATURES).combine_chunks(), uri)
    try:
        y = table.column(LABEL).to_numpy().astype(np.int64, casting="safe")
    except (ValueError, TypeError) as err:
        raise SourceError(f"{uri}: labels must be integers ({err})") from None
    if y.min() < 0:
        raise SourceError(f"{uri}: labels must be class numbers 0, 1, ... (found {y.min()})")
    return x, y


def _feature_matrix(features: pa.Array, uri: str) -> np.ndarray:
    """float32 [rows, width] of a list column, through Arrow's buffers (no Python object
    per value: a source may hold millions of rows). SourceError unless every row is a list
    of the same number of finite numbers."""
    kind = features.type
    refused = SourceError(f"{uri}: features must be equal-length lists of finite numbers")
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)):  # fmt: skip
        raise refused
    if not (pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)):
        raise refused
    lengths = pc.list_value_length(features)
    width = pc.min_max(lengths).as_py()
    if features.null_count or width["min"] != width["max"] or not width["min"]:
        raise refused
    flat = features.flatten().to_numpy(zero_copy_only=False)  # a null value reads as NaN
    x = flat.astype(np.float32).reshape(len(features), width["min"])
    if not np.isfinite(x).all():
        raise refused
    return x


def ingest_source(cfg: IngestConfig, storage_root: str) -> Manifest:
    x, y = read_source(cfg.source)
    try:
        splits = stratified_splits(x, y, cfg)
    except ValueError as err:  # scikit-learn's: a class too rare to stratify
        raise SourceError(f"{cfg.source}: cannot split it stratified by label: {err}") from None
    return write_dataset(
        dataset_uri(storage_root, cfg.dataset),
        cfg.dataset,
        splits,
        cfg.shards,
        extra={"num_classes": int(y.max()) + 1, "seed": cfg.seed, "source": cfg.source},
    )


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


def stdlib_files(max_bytes: int) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of the standard library's .py files, in a fixed order, up to
    ``max_bytes`` in all. Third-party packages are left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or total >= max_bytes:
            continue
        data = path.read_bytes()
        out.append((rel, data))
        total += len(data)
    return out


def text_splits(files: list[tuple[str, bytes]], cfg: IngestConfig) -> dict[str, np.ndarray]:
    """Byte tokens per split, cut into non-overlapping sequences of block_size + 1, in a
    seeded random order."""
    streams: dict[str, list[bytes]] = {"train": [], "val": [], "test": []}
    for rel, data in files:
        bucket = int(hashlib.sha256(f"{cfg.seed}:{rel}".encode()).hexdigest(), 16) % 1000 / 1000
        split = (
            "test"
            if bucket < cfg.test_fraction
            else "val"
            if bucket < (cfg.test_fraction + cfg.val_fraction)
            else "train"
        )
        streams[split].append(data + b"\n\n")
    width = cfg.block_size + 1
    # Files are joined in path order, so consecutive rows come from one file; shuffled, any
    # prefix of a split is a uniform sample of its files. The published test loss reads the
    # first LM_TEST_ROWS rows: unshuffled, those were _aix_support.py, the build flags of
    # _sysconfigdata_*.py and argparse (gpt_tiny: 2.56 nats there, 1.65 on the whole split),
    # and training's shuffle buffer (4 batches) mixed rows of one or two files only.
    rng = np.random.default_rng(cfg.seed)
    out = {}
    for split, parts in streams.items():
        tokens = np.frombuffer(b"".join(parts), dtype=np.uint8)
        rows = len(tokens) // width
        out[split] = rng.permutation(tokens[: rows * width].reshape(rows, width))
    return out


def ingest_text(cfg: IngestConfig, storage_root: str) -> Manifest:
    files = stdlib_files(cfg.max_bytes)
    tables = {split: token_table(seqs) for split, seqs in text_splits(files, cfg).items()}
    return write_tables(
        dataset_uri(storage_root, cfg.dataset),
        cfg.dataset,
        tables,
        cfg.shards,
        extra={
            "block_size": cfg.block_size,
            "vocab_size": 256,
            "files": len(files),
            "seed": cfg.seed,
            "source": f"Python {sysconfig.get_python_version()} standard library",
        },
    )


def synthetic_chunks(cfg: IngestConfig, split: str, shard: int, rows: int):
    """A shard's rows as tables of at most CHUNK_ROWS, seeded by (seed, split, shard)."""
    prototypes = np.random.default_rng(cfg.seed).uniform(0, 16, size=(CLASSES, WIDTH))
    rng = np.random.default_rng([cfg.seed, ("train", "val", "test").index(split), shard])
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        labels = rng.integers(0, CLASSES, size=n)
        noise = rng.normal(0, 3, size=(n, WIDTH))
        yield to_table(np.clip(prototypes[labels] + noise, 0, 16).astype(np.float32), labels)


def shard_sizes(rows: int, shards: int) -> list[int]:
    """Rows per shard, as ``np.array_split`` cuts them (the first ``rows % shards`` one
    larger), without the index array it needs: 8 bytes a row, 80 MB at 10 M rows."""
    return [rows // shards + (i < rows % shards) for i in range(shards)]


def ingest_synthetic(cfg: IngestConfig, storage_root: str) -> Manifest:
    root = dataset_uri(storage_root, cfg.dataset)
    test, val = int(cfg.rows * cfg.test_fraction), int(cfg.rows * cfg.val_fraction)
    entries = {}
    for split, rows in (("train", cfg.rows - test - val), ("val", val), ("test", test)):
        shards = []
        for i, n in enumerate(shard_sizes(rows, cfg.shards)):
            file = f"{split}-{i:05d}-of-{cfg.shards:05d}.parquet"
            chunks = synthetic_chunks(cfg, split, i, n)
            shards.append({"file": file, **write_streamed_shard(f"{root}/{file}", SCHEMA, chunks)})
        entries[split] = {"rows": rows, "shards": shards}
    extra = {
        "feature_shape": [WIDTH],
        "num_classes": CLASSES,
        "seed": cfg.seed,
        "source": f"synthetic: {cfg.rows} rows, class prototypes + N(0, 3) noise",
    }
    return write_manifest(root, cfg.dataset, SCHEMA, entries, extra)


SCHEMA = to_table(np.zeros((1, WIDTH), np.float32), np.zeros(1, np.int64)).schema


def ingest(cfg: IngestConfig, storage_root: str) -> Manifest:
    if cfg.source is not None:
        return ingest_source(cfg, storage_root)
    if cfg.dataset == "python_stdlib":
        return ingest_text(cfg, storage_root)
    if cfg.dataset == "synthetic":
        return ingest_synthetic(cfg, storage_root)
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
    try:
        manifest = ingest(cfg, get_settings().storage_root)
    except SourceError as err:
        raise SystemExit(f"[ingest] --source: {err}") from None
    for split in ("train", "val", "test"):
        print(
            f"[ingest] {split}: {manifest.rows(split)} rows in {len(manifest.shard_uris(split))} shards"
        )
    print(f"[ingest] manifest {manifest.root}/manifest.json sha256={manifest.sha256}")


if __name__ == "__main__":
    main()
