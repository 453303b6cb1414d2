"""ShardStore: a named group of actors holding a dataset's shards, replicated across nodes.

A coordinator places every shard on ``factor`` nodes (datacenters first), one replica actor
per node holding its own copies in the object store, and re-replicates when a node is lost.
Readers fetch a whole shard by id, zero-copy, from the nearest replica that answers, and
training ranks iterate their disjoint, per-epoch shuffled part of a split.

    coordinator = shard_store.start(manifest, factor=2)        # in a driver or a job
    shard = shard_store.ShardStoreShard(ShardReader(group), "train", rank, world)
    for batch in shard.iter_torch_batches(batch_size=32, drop_last=True,
                                          local_shuffle_seed=seed + epoch): ...
"""

from __future__ import annotations

from actors.shard_store.coordinator import ReplicaInfo
from actors.shard_store.group import connect, placement, running, start, stop
from actors.shard_store.names import NAMESPACE, coordinator_name
from actors.shard_store.plan import Node, Placement, Segment, place, rank_segments, segment_rows
from actors.shard_store.reader import ReadLedger, ShardReader, ShardStoreShard
from actors.shard_store.shard import ShardSpec, load, shard_specs, verified_bytes

__all__ = [
    "NAMESPACE",
    "Node",
    "Placement",
    "ReadLedger",
    "ReplicaInfo",
    "Segment",
    "ShardReader",
    "ShardSpec",
    "ShardStoreShard",
    "connect",
    "coordinator_name",
    "load",
    "place",
    "placement",
    "rank_segments",
    "running",
    "segment_rows",
    "shard_specs",
    "start",
    "stop",
    "verified_bytes",
]
