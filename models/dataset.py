"""Datasets on the storage URI: Parquet shards per split plus a manifest.

The manifest is written last, so a dataset without one is incomplete and never read. It
holds the schema, row counts and the SHA-256 of every shard; its own SHA-256 identifies
the data a model was trained on (the registry records it as lineage).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster import storage
from models.drift import INPUT_PROFILE, InputProfile

MANIFEST = "manifest.json"
FEATURES = "features"
LABEL = "label"
TOKENS = "tokens"
SPLITS = ("train", "val", "test")
DATASET_NAME = "^[a-z][a-z0-9_]{0,63}$"
"""What a dataset may be called: a folder name under ``<storage>/datasets``."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A dataset's manifest, as read back from storage."""

    root: str  # the dataset's folder URI
    data: dict
    sha256: str

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.data["feature_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.data["num_classes"])

    def rows(self, split: str) -> int:
        return int(self.data["splits"][split]["rows"])

    def shard_uris(self, split: str) -> list[str]:
        return [storage.join(self.root, s["file"]) for s in self.data["splits"][split]["shards"]]

    def read_split(self, split: str) -> pa.Table:
        """All rows of a split as one table, each shard checked against its SHA-256."""
        tables = []
        for shard in self.data["splits"][split]["shards"]:
            raw = storage.read_bytes(storage.join(self.root, shard["file"]))
            if hashlib.sha256(raw).hexdigest() != shard["sha256"]:
                raise ValueError(f"Shard {shard['file']} of {self.root} fails its SHA-256 check.")
            tables.append(pq.read_table(io.BytesIO(raw)))
        return pa.concat_tables(tables)

    @property
    def input_profile(self) -> InputProfile | None:
        """The train split's distribution, recorded at ingest (None: an older dataset, or
        one streamed in, e.g. the synthetic one)."""
        profile = self.data.get(INPUT_PROFILE)
        return InputProfile.from_dict(profile) if profile else None

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A small labelled split in memory: (features (N, *feature_shape) float32, labels (N,)).

        For evaluation and the demo's queries; training streams shards through Ray Data.
        """
        table = self.read_split(split)
        features = np.asarray(table[FEATURES].combine_chunks().flatten(), dtype=np.float32)
        labels = table[LABEL].to_numpy().astype(np.int64)
        return features.reshape(len(labels), *self.feature_shape), labels

    def load_tokens(self, split: str) -> np.ndarray:
        """A text split's sequences, (N, block_size + 1) int64 token ids."""
        table = self.read_split(split)
        width = int(self.data["block_size"]) + 1
        return np.asarray(table[TOKENS].combine_chunks().flatten(), dtype=np.int64).reshape(
            -1, width
        )


def dataset_uri(storage_root: str, name: str) -> str:
    return storage.join(storage_root, "datasets", name)


def read_manifest(root: str) -> Manifest:
    uri = storage.join(root, MANIFEST)
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"No dataset at {root} (no {MANIFEST}); run `python -m jobs.ingest` first."
        )
    raw = storage.read_bytes(uri)
    return Manifest(root=root, data=json.loads(raw), sha256=hashlib.sha256(raw).hexdigest())


def to_table(features: np.ndarray, labels: np.ndarray) -> pa.Table:
    """Rows as Arrow: ``features`` a fixed-size list of float32, ``label`` int64."""
    width = int(np.prod(features.shape[1:]))
    flat = pa.array(features.reshape(-1).astype(np.float32))
    return pa.table(
        {
            FEATURES: pa.FixedSizeListArray.from_arrays(flat, width),
            LABEL: pa.array(labels.astype(np.int64)),
        }
    )


def token_table(sequences: np.ndarray) -> pa.Table:
    """Text rows as Arrow: ``tokens`` a fixed-size list of int16 (one sequence per row)."""
    flat = pa.array(sequences.reshape(-1).astype(np.int16))
    return pa.table({TOKENS: pa.FixedSizeListArray.from_arrays(flat, sequences.shape[1])})


def write_dataset(
    root: str,
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    shards_per_split: int,
    extra: dict,
) -> Manifest:
    """Write a labelled dataset (features, labels per split); see ``write_tables``. The
    train split's distribution goes in the manifest: what served inputs are compared with
    (``models.drift``)."""
    tables = {split: to_table(x, y) for split, (x, y) in splits.items()}
    first = next(iter(splits.values()))[0]
    facts = {"feature_shape": list(first.shape[1:]), **extra}
    if "train" in splits:
        facts[INPUT_PROFILE] = InputProfile.of(splits["train"][0]).to_dict()
    return write_tables(root, name, tables, shards_per_split, facts)


def write_tables(
    root: str, name: str, tables: dict[str, pa.Table], shards_per_split: int, extra: dict
) -> Manifest:
    """Write each split as Parquet shards with SHA-256s, then the manifest (last)."""
    entries = {}
    for split, table in tables.items():
        shards = []
        for i, idx in enumerate(np.array_split(np.arange(table.num_rows), shards_per_split)):
            buf = io.BytesIO()
            pq.write_table(table.take(idx), buf)
            raw = buf.getvalue()
            file = f"{split}-{i:05d}-of-{shards_per_split:05d}.parquet"
            storage.write_bytes(storage.join(root, file), raw)
            shards.append(
                {"file": file, "rows": len(idx), "sha256": hashlib.sha256(raw).hexdigest()}
            )
        entries[split] = {"rows": table.num_rows, "shards": shards}
    return write_manifest(root, name, next(iter(tables.values())).schema, entries, extra)


def write_manifest(root: str, name: str, schema: pa.Schema, splits: dict, extra: dict) -> Manifest:
    """The manifest, written last: ``splits`` maps a split to its rows and shard entries
    (file, rows, sha256)."""
    manifest = {"dataset": name, "format": 1, "schema": str(schema), "splits": splits, **extra}
    storage.write_bytes(
        storage.join(root, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode()
    )
    return read_manifest(root)


def write_streamed_shard(uri: str, schema: pa.Schema, chunks: Iterable[pa.Table]) -> dict:
    """One Parquet shard written chunk by chunk (memory bounded by a chunk, whatever the
    shard's size), then hashed by reading it back in 4 MiB pieces; its manifest entry
    (without ``file``). Readers never see half a file: it is moved into place when done."""
    fs, path = storage.resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp, rows = f"{path}.tmp-writing", 0
    with fs.open_output_stream(tmp) as sink, pq.ParquetWriter(sink, schema) as writer:
        for chunk in chunks:
            writer.write_table(chunk)
            rows += chunk.num_rows
    digest = hashlib.sha256()
    with fs.open_input_stream(tmp) as f:
        while piece := f.read(4 << 20):
            digest.update(piece)
    fs.move(tmp, path)
    return {"rows": rows, "sha256": digest.hexdigest()}
