"""Pure decisions of the ShardStore (no Ray): where shards go, and who reads which rows.

``place`` spreads every shard's replicas over distinct nodes, datacenters first, keeping
the replicas that survive, so the coordinator calls it both to plan a new group and to
repair one after a node is lost. ``rank_segments`` and ``segment_rows`` give each training
rank its own disjoint rows of a split in a per-epoch order that any process recomputes
from the seed alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Node:
    """A node replicas may live on.

    Attributes:
        node_id: Ray's node id (hex).
        datacenter: Its region label (``cluster.topology.datacenter_of``); "" if unlabelled.
    """

    node_id: str
    datacenter: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    """Which nodes hold each shard, and the shards that have fewer than ``factor``.

    Attributes:
        holders: Shard id -> node ids holding (or to hold) a replica, first kept, then new.
        short: Shard ids placed on fewer than ``factor`` nodes (too few nodes alive).
    """

    holders: dict[str, tuple[str, ...]]
    short: tuple[str, ...] = ()

    def additions(self, current: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
        """(shard id, node id) pairs this placement adds to ``current``."""
        return [
            (shard, node)
            for shard, nodes in self.holders.items()
            for node in nodes
            if node not in current.get(shard, ())
        ]


def place(
    shard_ids: Sequence[str],
    nodes: Sequence[Node],
    factor: int,
    current: Mapping[str, Sequence[str]] | None = None,
    datacenter: str = "",
) -> Placement:
    """Every shard on ``factor`` distinct nodes of ``nodes``.

    Replicas in ``current`` on nodes still in ``nodes`` are kept (up to ``factor``); new ones
    go first to a datacenter that holds no replica of the shard yet (losing a datacenter then
    loses no shard), then to the node holding the fewest shards, ties by node id: the same
    inputs always give the same placement.

    Args:
        datacenter: Only nodes of this datacenter (a run tied to one: its reads stay
            inside it); replicas in ``current`` elsewhere are not kept. "": any node.

    Raises:
        ValueError: ``factor`` < 1, or no nodes (in ``datacenter``).
    """
    if factor < 1:
        raise ValueError(f"replication factor {factor}: it must be >= 1 (2 survives a node).")
    if datacenter:
        nodes = [n for n in nodes if n.datacenter == datacenter]
        if not nodes:
            raise ValueError(
                f"No alive nodes in datacenter {datacenter!r} to place shards on; start "
                "nodes labelled with it, or leave the run's datacenter empty."
            )
    if not nodes:
        raise ValueError("No alive nodes to place shards on; start the cluster's nodes first.")
    by_id = {n.node_id: n for n in nodes}
    load = dict.fromkeys(by_id, 0)
    holders: dict[str, list[str]] = {}
    for shard in shard_ids:  # survivors first, so the load counts them before new picks
        kept = [n for n in dict.fromkeys((current or {}).get(shard, ())) if n in by_id]
        holders[shard] = kept[:factor]
        for n in holders[shard]:
            load[n] += 1
    for shard in shard_ids:
        chosen = holders[shard]
        while len(chosen) < min(factor, len(by_id)):
            used = {by_id[n].datacenter for n in chosen}
            pick = min(
                (n for n in by_id if n not in chosen),
                key=lambda n: (by_id[n].datacenter in used, load[n], n),
            )
            chosen.append(pick)
            load[pick] += 1
    short = tuple(s for s in shard_ids if len(holders[s]) < factor)
    return Placement({s: tuple(h) for s, h in holders.items()}, short)


@dataclass(frozen=True, slots=True)
class Segment:
    """Rows ``start:stop`` of the shard at ``shard`` (its index in the split's order)."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def rank_segments(
    shard_rows: Sequence[int], rank: int, world: int, seed: int | None, equal: bool
) -> list[Segment]:
    """The rows rank ``rank`` of ``world`` reads in one epoch, as shard segments.

    The shards are laid end to end, in an order shuffled by ``seed`` (None: manifest
    order), and each rank takes one contiguous stretch: the ranks' rows are disjoint, and a
    rank touches about ``shards / world + 1`` shards (it fetches little it does not read).

    Args:
        shard_rows: Rows of each shard of the split, in manifest order.
        seed: The epoch's seed (the run's seed + the epoch); every rank passes the same.
        equal: Every rank gets ``total // world`` rows (up to ``world - 1`` rows left out),
            so with ``drop_last`` every rank takes the same number of steps and collectives
            never wait on a rank that ran out; False covers every row (validation).
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    order = list(range(len(shard_rows)))
    if seed is not None:
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(shard_rows))]
    total = sum(shard_rows)
    if equal:
        lo, hi = rank * (total // world), (rank + 1) * (total // world)
    else:
        lo, hi = rank * total // world, (rank + 1) * total // world
    segments, at = [], 0
    for shard in order:
        n = shard_rows[shard]
        start, stop = max(lo, at), min(hi, at + n)
        if start < stop:
            segments.append(Segment(shard, start - at, stop - at))
        at += n
    return segments


def segment_rows(segment: Segment, seed: int | None) -> np.ndarray:
    """The row indices of ``segment`` within its shard, shuffled by (``seed``, shard) or in
    order when ``seed`` is None; int64, shape (len(segment),)."""
    rows = np.arange(segment.start, segment.stop, dtype=np.int64)
    if seed is None:
        return rows
    return np.random.default_rng([seed, segment.shard, segment.start]).permutation(rows)
