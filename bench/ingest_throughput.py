"""Data benchmark: rows/s Ray Data delivers to Ray Train workers vs one pyarrow reader.

    .venv/bin/python -m bench.ingest_throughput            # 10-20 minutes on 2 busy cores
    .venv/bin/python -m bench.ingest_throughput --epochs 1 --variants product   # smoke run
    .venv/bin/python -m bench.ingest_throughput --variants datasource_v1   # product + one

Data: ``jobs.ingest`` writes the ``python_stdlib`` text dataset (byte tokens, 129-token
sequences stored as a fixed-size list of int16) with the whole standard library
(``--max-bytes``) into the bench cluster's storage, under ``bench/ingest_throughput``
(so a user's own ``datasets/python_stdlib`` is never overwritten). Both sides read the
same ``train`` shards, ``--epochs`` times over, at the same batch size.

Ours: a ``TorchTrainer`` with 2 CPU workers, its datasets built as the product builds
them (``jobs.train_datasets`` with ``cache_data=False``: ``read_parquet`` over
the manifest's shard URIs, streamed every epoch, not materialized), each worker iterating
``ray.train.get_dataset_shard("train").iter_torch_batches(batch_size, drop_last=True)``
and doing nothing else with the batches. Its rate is the rows of all workers together
over the wall-clock from the first batch to the last batch across workers (the rows of
the very first batch left out). Setup (building the datasets and the trainer, then
``fit()`` up to the first batch) is reported apart as ``startup_s``, and the epochs'
own waits for their first batch as ``epoch_first_batch_s``.

Baseline: one process (this driver) reading the same files with
``pyarrow.parquet.ParquetFile(...).iter_batches(batch_size)`` and turning each batch into
a torch tensor of the same shape (rows, 129), timed the same way. It runs before and
after the Ray side; the baseline figure is the mean of the two.

``ratio`` = Ray Data rows/s / pyarrow rows/s. Goal: >= 0.8.

The headline row (``ingest_throughput``, printed last) is the product's configuration
and names the fastest variant; every other row (``ingest_throughput.<variant>``) changes
Ray knobs a product could set, each against a baseline at its own batch size:

- ``v2_footer_actors_1``: ``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=1`` where ``read_parquet``
  runs. Ray 2.60's default Parquet reader (DataSourceV2: ``ListFiles -> ReadFiles``) starts
  32 footer-reading actors, i.e. 32 worker processes, each time the plan executes, and a
  streamed dataset executes once per epoch.
- ``datasource_v1``: ``DataContext.use_datasource_v2 = False``, Ray's V1 Parquet reader
  (files listed once, on the driver, when the dataset is built).
- ``v1_prefetch_4``, ``v1_blocks_8``, ``v1_batch_256``: the V1 reader plus
  ``prefetch_batches=4``, ``read_parquet(override_num_blocks=8)``, batches of 256 rows.
- ``v1_loop_shuffle``: the V1 reader iterated as ``train_loop.py`` iterates (local shuffle
  buffer of 4 batches).
- ``shard_store``: not Ray Data: ``actors.shard_store`` replica actors hold the train
  shards as NumPy in the object store (factor 1: the bench cluster is one node); each
  worker fetches whole shards zero-copy once per epoch (the next on a thread), cuts
  shuffled batches locally and turns them into tensors with ``torch.from_numpy``.
- ``materialized``: ``cache_data=True`` (the product's default): read once before
  ``fit()`` (counted in the setup), every epoch from the object store.

Each variant runs as a Ray job of its own, so each starts with cold worker processes. The
cluster is a private one (temp home, free ports) started and stopped here, or with
``--existing`` the running cluster of the current ``AIMASS_*`` settings; the data and the
Ray Train run folders go under ``<storage>/bench/ingest_throughput``. The row's
``load_avg_1m`` is the machine's load while the Ray side ran: on a shared machine other
work slows the many-process Ray side more than the one pyarrow reader.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from actors import shard_store
from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results
from cluster import storage
from cluster.settings import Settings
from jobs import train_datasets
from jobs.configs import TrainConfig
from jobs.ingest import IngestConfig, ingest
from models.dataset import TOKENS, Manifest

NAME = "ingest_throughput"
SOURCES = {"ray_data": "Ray Data", "shard_store": "ShardStore"}
GOAL = 0.8
SPLIT = "train"


@dataclass(frozen=True, slots=True)
class Variant:
    """One configuration of the Ray side; the defaults are the product's."""

    name: str
    note: str
    batch_size: int | None = None
    """Rows per batch; None means the bench's ``--batch-size`` (TrainConfig's default)."""
    prefetch_batches: int = 1
    """``iter_torch_batches(prefetch_batches=...)``; 1 is Ray's default."""
    override_num_blocks: int | None = None
    """``read_parquet(override_num_blocks=...)``; None reads through ``datasets()``."""
    context: dict = field(default_factory=dict)
    """DataContext attributes set before the datasets are built."""
    cache_data: bool = False
    """TrainConfig.cache_data: True materializes the datasets before fit (the product's
    default for small datasets); the bench's subject is the streaming path (False)."""
    local_shuffle: bool = False
    """Iterate as the training loop does: a local shuffle buffer of 4 batches."""
    env: dict = field(default_factory=dict)
    """Environment variables set in this driver while the datasets are built (Ray Data
    reads some knobs from the environment of the process that calls ``read_parquet``)."""
    source: str = "ray_data"
    """``ray_data`` or ``shard_store`` (``actors.shard_store``: whole shards zero-copy from
    replica actors, batches cut in the worker, shuffled per epoch as training does)."""


V1 = {"use_datasource_v2": False}
VARIANTS = {
    v.name: v
    for v in (
        Variant("product", "trainer.datasets(cache_data=False), Ray's defaults"),
        Variant(
            "v2_footer_actors_1",
            "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=1 where read_parquet is called (V2 "
            "reader, 1 footer actor per listing instead of 32)",
            env={"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"},
        ),
        Variant(
            "datasource_v1",
            "DataContext.use_datasource_v2 = False (Ray's V1 Parquet reader)",
            context=V1,
        ),
        Variant(
            "v1_prefetch_4",
            "V1 reader + iter_torch_batches(prefetch_batches=4)",
            context=V1,
            prefetch_batches=4,
        ),
        Variant(
            "v1_blocks_8",
            "V1 reader + read_parquet(override_num_blocks=8)",
            context=V1,
            override_num_blocks=8,
        ),
        Variant(
            "v1_loop_shuffle",
            "V1 reader, iterated as train_loop.py does (local_shuffle_buffer_size=4*batch)",
            context=V1,
            local_shuffle=True,
        ),
        Variant(
            "v1_batch_256", "V1 reader + batch_size=256 on both sides", context=V1, batch_size=256
        ),
        Variant(
            "shard_store",
            "ShardStore actors (factor 1 on this one node): whole shards zero-copy from the "
            "object store, next shard prefetched, batches cut locally, shuffled per epoch",
            source="shard_store",
        ),
        Variant(
            "materialized",
            "trainer.datasets(cache_data=True): read once before fit, epochs from the object store",
            cache_data=True,
        ),
    )
}


@dataclass(kw_only=True, frozen=True, slots=True)
class BenchConfig:
    """What to ingest, how often to read it and which Ray configurations to try."""

    epochs: int = 3
    """Passes over the train split on each side (each pass streams from Parquet)."""
    batch_size: int = TrainConfig(name="bench").batch_size
    max_bytes: int = 64_000_000
    """Corpus cap for ingest; above the standard library's size, i.e. all of it."""
    shards: int = IngestConfig().shards
    num_workers: int = 2
    variants: tuple[str, ...] = tuple(VARIANTS)


def data_root(storage_root: str, shards: int) -> str:
    return storage.join(storage_root, "bench", NAME, f"shards_{shards}")


def ingest_data(storage_root: str, cfg: BenchConfig) -> Manifest:
    icfg = IngestConfig(dataset="python_stdlib", max_bytes=cfg.max_bytes, shards=cfg.shards)
    return ingest(icfg, data_root(storage_root, cfg.shards))


def split_bytes(manifest: Manifest) -> dict:
    """Bytes of the train shards on storage, and decoded (the int16 tokens)."""
    files = manifest.shard_uris(SPLIT)
    on_disk = 0
    for uri in files:
        fs, path = storage.resolve(uri)
        on_disk += fs.get_file_info(path).size
    width = int(manifest.data["block_size"]) + 1
    return {
        "rows": manifest.rows(SPLIT),
        "shards": len(files),
        "bytes_parquet": on_disk,
        "bytes_decoded": manifest.rows(SPLIT) * width * 2,
        "tokens_per_row": width,
    }


# --- the baseline: one process, pyarrow ---------------------------------------------------


def pyarrow_side(manifest: Manifest, batch_size: int, epochs: int) -> dict:
    """Read the train shards ``epochs`` times with pyarrow, each batch as a torch tensor."""
    width = int(manifest.data["block_size"]) + 1
    uris = manifest.shard_uris(SPLIT)
    t0 = time.perf_counter()
    first = last = None
    rows = first_rows = 0
    for _ in range(epochs):
        for uri in uris:
            fs, path = storage.resolve(uri)
            with fs.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                    col = batch.column(TOKENS)
                    x = torch.from_numpy(col.flatten().to_numpy().reshape(len(col), width))
                    now = time.perf_counter()
                    if first is None:
                        first, first_rows = now, x.shape[0]
                    rows += x.shape[0]
                    last = now
    return {
        "rows": rows,
        "rows_per_s": (rows - first_rows) / (last - first),
        "setup_s": first - t0,
        "elapsed_s": last - t0,
    }


# --- ours: Ray Train workers over Ray Data ------------------------------------------------


def consume(config: dict) -> None:
    """The training function: iterate the train shard, time every batch, no model."""
    import torch.distributed as dist

    ctx = ray.train.get_context()
    if config["shard_group"]:
        from actors.shard_store import ShardReader, ShardStoreShard

        reader = ShardReader(config["shard_group"])
        shard = ShardStoreShard(reader, SPLIT, ctx.get_world_rank(), ctx.get_world_size())
    else:
        shard = ray.train.get_dataset_shard(SPLIT)
    kwargs = {
        "batch_size": config["batch_size"],
        "drop_last": True,
        "prefetch_batches": config["prefetch_batches"],
    }
    first = last = tensor = None
    rows = first_rows = batches = 0
    epochs = []
    for epoch in range(config["epochs"]):
        if config["local_shuffle"] or config["shard_group"]:
            kwargs |= {
                "local_shuffle_buffer_size": 4 * config["batch_size"],
                "local_shuffle_seed": epoch,
            }
        t0, epoch_first, epoch_rows = time.time(), None, 0
        for batch in shard.iter_torch_batches(**kwargs):
            now = time.time()
            n = batch[TOKENS].shape[0]
            if first is None:
                first, first_rows = now, n
                tensor = f"{tuple(batch[TOKENS].shape)} {batch[TOKENS].dtype}"
            if epoch_first is None:
                epoch_first = now
            rows += n
            epoch_rows += n
            batches += 1
            last = now
        epochs.append(
            {"rows": epoch_rows, "start": t0, "first_batch": epoch_first, "end": time.time()}
        )
    mine = {
        "rank": ctx.get_world_rank(),
        "rows": rows,
        "batches": batches,
        "first": first,
        "first_rows": first_rows,
        "first_batch": tensor,
        "last": last,
        "epochs": epochs,
    }
    gathered = [None] * ctx.get_world_size()
    dist.all_gather_object(gathered, mine)
    # Ray Train v2 keeps metrics only with a checkpoint: the timings go to storage instead.
    if ctx.get_world_rank() == 0:
        storage.write_bytes(config["stats_uri"], json.dumps(gathered).encode())


def build_datasets(variant: Variant, manifest: Manifest) -> dict:
    """The trainer's datasets for ``variant``: the product's function unless a read knob
    needs ``read_parquet``'s arguments, then the same function with that one change."""
    train_cfg = TrainConfig(name=f"bench_{NAME}", cache_data=variant.cache_data)
    if variant.override_num_blocks is None:
        return train_datasets(train_cfg, manifest)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return {
        split: ray.data.read_parquet(
            manifest.shard_uris(split), override_num_blocks=variant.override_num_blocks
        )
        for split in ("train", "val")
    }


def ray_side(
    variant: Variant, manifest: Manifest, batch_size: int, cfg: BenchConfig, settings: Settings
) -> dict:
    """Fit a TorchTrainer whose workers only consume their shards, in a Ray job of its own
    (so every variant starts with cold worker processes); the timings."""
    ray.init(address=settings.gcs_address, logging_level="ERROR")
    try:
        return fit_and_time(variant, manifest, batch_size, cfg, settings)
    finally:
        ray.shutdown()


def fit_and_time(
    variant: Variant, manifest: Manifest, batch_size: int, cfg: BenchConfig, settings: Settings
) -> dict:
    storage_path = storage.join(settings.storage_root, "bench", NAME, "ray_train")
    stats_uri = storage.join(storage_path, f"{variant.name}.json")
    ctx = ray.data.DataContext.get_current()
    saved = {key: getattr(ctx, key) for key in variant.context}
    saved_env = {key: os.environ.get(key) for key in variant.env}
    for key, value in variant.context.items():
        setattr(ctx, key, value)
    os.environ.update(variant.env)
    group = None
    try:
        t_build = time.time()
        if variant.source == "shard_store":
            group = shard_store.start(manifest, group=NAME, splits=(SPLIT,), factor=1)
        trainer = TorchTrainer(
            consume,
            train_loop_config={
                "epochs": cfg.epochs,
                "batch_size": batch_size,
                "prefetch_batches": variant.prefetch_batches,
                "local_shuffle": variant.local_shuffle,
                "stats_uri": stats_uri,
                "shard_group": NAME if group else None,
            },
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=False),
            run_config=RunConfig(name=f"{NAME}_{variant.name}", storage_path=storage_path),
            datasets=None if group else build_datasets(variant, manifest),
        )
        t_fit = time.time()
        trainer.fit()  # raises if the run fails
        t_done = time.time()
    finally:
        if group:
            shard_store.stop(NAME)
        for key, value in saved.items():
            setattr(ctx, key, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    workers = json.loads(storage.read_bytes(stats_uri))
    first = min(w["first"] for w in workers)
    last = max(w["last"] for w in workers)
    rows = sum(w["rows"] for w in workers)
    first_rows = next(w["first_rows"] for w in workers if w["first"] == first)
    epoch_rates = []
    for e in range(cfg.epochs):
        per = [w["epochs"][e] for w in workers]
        span = max(p["end"] for p in per) - min(p["start"] for p in per)
        epoch_rates.append(round(sum(p["rows"] for p in per) / span))
    return {
        "rows": rows,
        "rows_per_s": (rows - first_rows) / (last - first),
        "setup_s": first - t_build,
        "build_s": t_fit - t_build,
        "fit_s": t_done - t_fit,
        "epoch_rows_per_s": epoch_rates,
        "epoch_first_batch_s": [
            round(max(w["epochs"][e]["first_batch"] - w["epochs"][e]["start"] for w in workers), 3)
            for e in range(cfg.epochs)
        ],
        "batch_tensor": workers[0]["first_batch"],
        "workers": [
            {"rank": w["rank"], "rows": w["rows"], "batches": w["batches"]} for w in workers
        ],
    }


# --- rows ---------------------------------------------------------------------------------


def rounded(side: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in side.items()}


def measure_variant(
    variant: Variant, manifest: Manifest, cfg: BenchConfig, settings: Settings
) -> dict:
    batch_size = variant.batch_size or cfg.batch_size
    log(f"{variant.name}: pyarrow baseline, batch {batch_size}")
    before = pyarrow_side(manifest, batch_size, cfg.epochs)
    source = SOURCES[variant.source]
    log(f"{variant.name}: Ray Train + {source}, {cfg.num_workers} workers ({variant.note})")
    load = os.getloadavg()[0]
    ours = ray_side(variant, manifest, batch_size, cfg, settings)
    load = max(load, os.getloadavg()[0])
    log(f"{variant.name}: pyarrow baseline again")
    after = pyarrow_side(manifest, batch_size, cfg.epochs)
    base_rate = statistics.mean((before["rows_per_s"], after["rows_per_s"]))
    ratio = ours["rows_per_s"] / base_rate
    log(
        f"{variant.name}: {ours['rows_per_s']:,.0f} rows/s vs pyarrow {base_rate:,.0f} rows/s "
        f"-> ratio {ratio:.3f} (setup {ours['setup_s']:.1f} s)"
    )
    return {
        "name": NAME if variant.name == "product" else f"{NAME}.{variant.name}",
        "ratio": round(ratio, 3),
        "goal": f">= {GOAL}",
        "goal_met": ratio >= GOAL,
        "ratio_of": f"{SOURCES[variant.source]} rows/s into all Train workers / one-process "
        "pyarrow rows/s",
        "variant": variant.name,
        "note": variant.note,
        "batch_size": batch_size,
        "data": split_bytes(manifest),
        "baseline": {
            "method": f"pyarrow {pa.__version__} ParquetFile.iter_batches -> torch, 1 process",
            "rows_per_s": round(base_rate),
            "runs": [rounded(before), rounded(after)],
        },
        "candidate": {
            "method": f"Ray {ray.__version__} TorchTrainer, {cfg.num_workers} CPU workers, "
            + (
                "ShardStoreShard.iter_torch_batches"
                if variant.source == "shard_store"
                else "get_dataset_shard().iter_torch_batches"
            ),
            **rounded(ours),
            "rows_per_s": round(ours["rows_per_s"]),
        },
        "startup_s": round(ours["setup_s"], 2),
        # Other work on the machine slows the multi-process side more than the one reader.
        "load_avg_1m": round(load, 1),
    }


def measure(cfg: BenchConfig, settings: Settings) -> list[dict]:
    log(f"ingesting python_stdlib (max_bytes={cfg.max_bytes}, {cfg.shards} shards)")
    manifest = ingest_data(settings.storage_root, cfg)
    rows = []
    for name in cfg.variants:
        rows.append(measure_variant(VARIANTS[name], manifest, cfg, settings))
    return rows


def summarize(rows: list[dict], cfg: BenchConfig) -> list[dict]:
    """Order the rows (headline last) and name the fastest variant in the headline."""
    machine = machine_info()
    best = max(rows, key=lambda r: r["ratio"])
    extra = {"config": asdict(cfg), "machine": machine}
    others = [r | extra for r in rows if r["name"] != NAME]
    head = [
        r
        | extra
        | {
            "fastest_variant": {
                "variant": best["variant"],
                "ratio": best["ratio"],
                "rows_per_s": best["candidate"]["rows_per_s"],
                "note": best["note"],
            }
        }
        for r in rows
        if r["name"] == NAME
    ]
    return others + head


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, bool]:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-bytes", type=int, default=defaults.max_bytes)
    parser.add_argument("--shards", type=int, default=defaults.shards)
    parser.add_argument(
        "--variants",
        default=",".join(defaults.variants),
        help=f"comma-separated, from: {', '.join(VARIANTS)} (product is always run)",
    )
    parser.add_argument("--existing", action="store_true", help="use the running cluster")
    args = parser.parse_args(argv)
    # The product's configuration is the headline row: always measured, first.
    variants = ("product", *(v for v in args.variants.split(",") if v and v != "product"))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if min(args.epochs, args.batch_size, args.shards) < 1:
        parser.error("--epochs, --batch-size and --shards must be >= 1")
    cfg = replace(
        defaults,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_bytes=args.max_bytes,
        shards=args.shards,
        variants=variants,
    )
    return cfg, args.existing


def main(argv: list[str] | None = None) -> None:
    cfg, existing = parse_args(argv)
    with cluster(existing) as settings:
        rows = measure(cfg, settings)
    collected: list[dict] = []
    for r in summarize(rows, cfg):
        emit(r, collected)
    log(f"wrote {write_results(NAME, collected)}")


if __name__ == "__main__":
    main()
