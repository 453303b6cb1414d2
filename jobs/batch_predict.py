"""Offline batch inference: a version's ONNX model over Parquet files, results as Parquet.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.batch_predict --model digits@champion --input digits:test --output /tmp/digits-predictions

``--input`` is a registered dataset (``digits``: every split; ``digits:test``: one) or a
Parquet URI (a file, or a folder read recursively) with a ``features`` column. Ray Data
shares the input files out to ``--concurrency`` actors, each holding the version's ONNX
Runtime session (``--threads`` intra-op threads): an actor reads its file in batches of
``--batch-size`` rows, scores them and writes the file's output shard
(``part-<hash of its URI>.parquet``: ``row`` (its position in the input file),
``prediction``, ``probabilities``, and ``label`` when the input has one) whole or not at
all, with the model and version in its metadata. Files are the unit of parallelism: give
more files than actors. ``_manifest.json`` lists the shards when the job is done.

Resumable by output shard: run the same command again after a failure and the files whose
shard exists are skipped. An output folder that holds another version's predictions is
refused. Progress lines give shards and rows done, rows/s and the time left.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from cluster import storage
from cluster.settings import get_settings
from jobs._private.cli import parse_config
from models import package
from models.dataset import FEATURES, LABEL, SPLITS, dataset_uri, read_manifest
from models.evaluation import softmax
from models.exceptions import ModelNotFound
from models.refs import ModelVersionInfo
from models.registry import Registry
from models.signature import CLASSIFY, INPUT_NAME, OUTPUT_NAME
from models.zoo import architecture

MANIFEST, VERSION_FILE = "_manifest.json", "_version.json"


class BatchPredictConfig(BaseModel):
    model: str = Field(description="Version to run: name@version or name@alias.")
    input: str = Field(description="A dataset (digits, digits:test) or a Parquet URI.")
    output: str = Field(description="Folder URI for the output shards.")
    concurrency: int = Field(2, ge=1, le=256, description="Actors running the model.")
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="Rows per ONNX Runtime call.")
    threads: int = Field(1, ge=1, le=64, description="ONNX Runtime threads per actor.")
    num_cpus: float = Field(0.5, gt=0, le=64, description="CPUs Ray reserves per actor.")


class ShardScorer:
    """A Ray Data actor scoring whole input files: it reads one in ``batch_size``-row
    batches (memory bounded by a batch), runs the version's ONNX Runtime session (loaded
    once per actor) on each and writes the file's output shard itself, so shards are
    written in parallel and no row travels back through the driver."""

    def __init__(
        self, onnx: bytes, info: dict, input_shape: list[int], threads: int, batch_size: int
    ):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        self.info, self.input_shape, self.batch_size = info, input_shape, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            self._score(str(src), str(dst))
            for src, dst in zip(batch["source"], batch["shard"], strict=True)
        ]
        return {"source": batch["source"], "rows": np.asarray(rows, dtype=np.int64)}

    def _score(self, source: str, shard: str) -> int:
        fs, path = storage.resolve(source)
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            columns = [FEATURES] + ([LABEL] if LABEL in parquet.schema_arrow.names else [])
            out: dict[str, list[np.ndarray]] = {"prediction": [], "probabilities": []}
            for part in parquet.iter_batches(batch_size=self.batch_size, columns=columns):
                features = part.column(FEATURES)
                x = np.asarray(features.flatten(), dtype=np.float32).reshape(-1, *self.input_shape)
                logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
                proba = softmax(logits).astype(np.float32)
                out["prediction"].append(proba.argmax(1))
                out["probabilities"].append(proba)
                if LABEL in columns:
                    out.setdefault(LABEL, []).append(part.column(LABEL).to_numpy())
        if not out["prediction"]:  # an empty file: an empty shard
            out = {
                "prediction": [np.zeros(0)],
                "probabilities": [np.zeros((0, self.info["classes"]))],
            }
        return _write_shard(shard, out, self.info)


def input_files(spec: str, storage_root: str) -> list[str]:
    """The Parquet files ``spec`` names, sorted: a dataset's shards, or files under a URI."""
    name, _, split = spec.partition(":")
    root = dataset_uri(storage_root, name)
    if "/" not in spec and storage.exists(storage.join(root, "manifest.json")):
        manifest = read_manifest(root)
        if split and split not in SPLITS:
            raise ValueError(f"No split {split!r} in {name}: choose one of {SPLITS}")
        return [uri for s in ([split] if split else SPLITS) for uri in manifest.shard_uris(s)]
    fs, path = storage.resolve(spec)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [spec]
    if info.type != pafs.FileType.Directory:
        raise ValueError(f"{spec!r} is neither a registered dataset nor a Parquet file or folder")
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    prefix = spec[: len(spec) - len(path)] if "://" in spec else ""
    files = sorted(prefix + f.path for f in found if f.is_file and f.path.endswith(".parquet"))
    if not files:
        raise ValueError(f"No .parquet file under {spec!r}")
    return files


def shard_name(source: str) -> str:
    return f"part-{hashlib.sha256(source.encode()).hexdigest()[:16]}.parquet"


def _claim(output: str, info: ModelVersionInfo) -> None:
    """Mark ``output`` as this version's; refuse it when another version's results are there."""
    marker = storage.join(output, VERSION_FILE)
    mine = {"model": info.name, "version": info.version}
    if storage.exists(marker):
        theirs = json.loads(storage.read_bytes(marker))
        if theirs != mine:
            raise ValueError(
                f"{output} holds predictions of {theirs['model']} v{theirs['version']}: "
                "choose another --output"
            )
        return
    storage.write_bytes(marker, json.dumps(mine).encode())


def _write_shard(uri: str, columns: dict[str, list[np.ndarray]], info: dict) -> int:
    proba = np.concatenate(columns["probabilities"]).astype(np.float32)
    table = pa.table(
        {
            "row": np.arange(len(proba), dtype=np.int64),
            "prediction": np.concatenate(columns["prediction"]).astype(np.int64),
            "probabilities": pa.FixedSizeListArray.from_arrays(
                pa.array(proba.reshape(-1)), proba.shape[1]
            ),
            **({LABEL: np.concatenate(columns[LABEL])} if LABEL in columns else {}),
        }
    ).replace_schema_metadata(
        {"aimass.model": info["name"], "aimass.version": str(info["version"])}
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(uri, buffer.getvalue())  # whole or not at all: what resuming relies on
    return len(proba)


def run(cfg: BatchPredictConfig, registry: Registry, storage_root: str) -> dict:
    """Predict every pending input file; returns the manifest written at the end."""
    import ray

    info = registry.resolve(cfg.model)
    folder = registry.fetch(info, files=(package.ONNX_FILE, package.CONFIG_FILE))
    config = package.PackageConfig.read(folder)
    if architecture(config.architecture).task != CLASSIFY:
        raise ValueError(f"{info.name} v{info.version} is not a classifier")
    files = input_files(cfg.input, storage_root)
    _claim(cfg.output, info)
    shards = {src: storage.join(cfg.output, shard_name(src)) for src in files}
    pending = [src for src in files if not storage.exists(shards[src])]
    print(f"[batch_predict] {info.name} v{info.version}: {len(files)} input files, "
          f"{len(files) - len(pending)} done before, {len(pending)} to go", flush=True)  # fmt: skip
    total = sum(_rows(src) for src in pending)
    done, written, start = 0, 0, time.monotonic()
    if pending:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        described = {
            "name": info.name,
            "version": info.version,
            "classes": config.signature.num_classes,
        }
        work = ray.data.from_items(
            [{"source": src, "shard": shards[src]} for src in pending],
            override_num_blocks=len(pending),  # a file per task: the actors share them out
        ).map_batches(
            ShardScorer,
            fn_constructor_kwargs={
                "onnx": (folder / package.ONNX_FILE).read_bytes(),
                "info": described,
                "input_shape": list(config.signature.input_shape),
                "threads": cfg.threads,
                "batch_size": cfg.batch_size,
            },
            concurrency=cfg.concurrency,
            num_cpus=cfg.num_cpus,
            batch_size=1,
            batch_format="numpy",
        )
        for batch in work.iter_batches(batch_size=None, batch_format="numpy"):
            for rows in batch["rows"]:
                done, written = done + int(rows), written + 1
                _progress(written, len(pending), done, total, start)
    elapsed = time.monotonic() - start
    listed = storage.join(cfg.output, MANIFEST)
    before = json.loads(storage.read_bytes(listed))["shards"] if storage.exists(listed) else {}
    manifest = {
        "model": info.name,
        "version": info.version,
        "input": cfg.input,
        # Every shard the folder holds: this run's input and earlier ones'.
        "shards": before | {shard_name(src): {"source": src} for src in files},
        "rows_this_run": done,
        "seconds_this_run": round(elapsed, 3),
    }
    storage.write_bytes(storage.join(cfg.output, MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest


def _rows(uri: str) -> int:
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _progress(shards: int, of: int, rows: int, total: int, start: float) -> None:
    rate = rows / max(time.monotonic() - start, 1e-9)
    eta = (total - rows) / rate if rate else float("inf")
    print(
        f"[batch_predict] shard {shards}/{of}: {rows:,}/{total:,} rows, "
        f"{rate:,.0f} rows/s, eta {eta:.0f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BatchPredictConfig, __doc__.split("\n")[0], argv)
    settings = get_settings()
    try:
        m = run(cfg, Registry.from_settings(settings), settings.storage_root)
    except (ModelNotFound, ValueError) as err:
        sys.exit(f"[batch_predict] {err}")
    rate = m["rows_this_run"] / max(m["seconds_this_run"], 1e-9)
    print(
        f"[batch_predict] {m['rows_this_run']:,} rows in {m['seconds_this_run']:.1f} s "
        f"({rate:,.0f} rows/s); {len(m['shards'])} shards in {cfg.output}",
        flush=True,
    )


if __name__ == "__main__":
    main()
