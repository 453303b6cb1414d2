"""Reading a group's shards: by shard id with replica fallback, and as training batches.

The per-batch path does no Ray call: a rank fetches each whole shard it reads once per
epoch (zero-copy NumPy views of the replica's object), the next one on a thread while it
iterates the current one, and cuts batches locally. A read tries the replicas nearest
first (this node, this datacenter, the rest); when all fail it asks the coordinator again,
since the group may have re-replicated meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from actors.exceptions import ShardNotHeld, ShardUnavailable
from actors.shard_store.names import NAMESPACE, coordinator_name
from actors.shard_store.plan import rank_segments, segment_rows
from actors.shard_store.shard import Columns
from cluster.topology import datacenter_of

READ_TIMEOUT_S = 30.0


@dataclass(slots=True)
class ReadLedger:
    """What reads did: successes, retries (a replica failed, another was tried) and
    failures (no replica at all, after every round)."""

    reads: int = 0
    retries: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, kind: str, detail: str = "") -> None:
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)
            if detail:
                self.errors.append(detail)


class ShardReader:
    """Reads a group's shards by id, from the nearest replica that answers.

    Args:
        group: The group's name.
        rounds: Times to ask the coordinator for fresh locations before giving up.
    """

    def __init__(self, group: str, rounds: int = 5) -> None:
        self.group, self.rounds = group, rounds
        self.coordinator = ray.get_actor(coordinator_name(group), namespace=NAMESPACE)
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.datacenter = datacenter_of(ctx.get_node_labels() or {}) or ""
        self.ledger = ReadLedger()
        self._locations = ray.get(self.coordinator.locations.remote())

    def specs(self, split: str):
        return ray.get(self.coordinator.specs_of.remote(split))

    def _nearest(self, shard_id: str) -> list:
        replicas = self._locations.get(shard_id, [])
        return sorted(
            replicas,
            key=lambda r: (r[0].node_id != self.node_id, r[0].datacenter != self.datacenter),
        )

    def get(self, shard_id: str) -> Columns:
        """The shard's columns (read-only arrays in shared memory).

        Raises:
            ShardUnavailable: No replica answered in ``rounds`` rounds.
        """
        for attempt in range(self.rounds):
            for info, handle in self._nearest(shard_id):
                try:
                    [ref] = ray.get(handle.ref.remote(shard_id), timeout=READ_TIMEOUT_S)
                    columns = ray.get(ref, timeout=READ_TIMEOUT_S)
                    self.ledger.note("reads")
                    return columns
                except (ray.exceptions.RayError, ShardNotHeld) as err:
                    self.ledger.note("retries", f"{shard_id}@{info.name}: {type(err).__name__}")
            time.sleep(0.2 * (attempt + 1))  # let the coordinator notice the loss
            self._locations = ray.get(self.coordinator.locations.remote())
        self.ledger.note("failures", shard_id)
        raise ShardUnavailable(
            f"No replica of shard {shard_id} in group {self.group} answered after "
            f"{self.rounds} rounds; check `aimass status` for the group's placement.",
            shard_id,
            self.node_id,
            self.datacenter,
        )


class ShardStoreShard:
    """One rank's view of a split, with the part of Ray Data's ``DataIterator`` that the
    training loop uses (``iter_torch_batches``), so the loop runs on either source."""

    def __init__(self, reader: ShardReader, split: str, rank: int, world: int) -> None:
        self.reader, self.rank, self.world = reader, rank, world
        self.specs = reader.specs(split)

    def iter_torch_batches(
        self,
        *,
        batch_size: int,
        device=None,
        drop_last: bool = False,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
        prefetch_batches: int = 1,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of this rank's rows: shuffled by ``local_shuffle_seed`` (shards in a
        seeded order, rows within each), in order when it is None; ``drop_last`` also
        gives every rank the same number of rows, hence of batches. The buffer size and
        prefetch are Ray Data's knobs, accepted for the same call; here a whole shard is
        the buffer and the next shard is always prefetched."""
        del local_shuffle_buffer_size, prefetch_batches
        rows = [s.rows for s in self.specs]
        segments = rank_segments(rows, self.rank, self.world, local_shuffle_seed, drop_last)
        pending: list[tuple[Columns, np.ndarray]] = []  # rows carried into the next batch
        held = 0
        for columns, segment in self._prefetched(segments):
            idx = segment_rows(segment, local_shuffle_seed)
            at = 0
            if held:  # the previous shard's last rows start this batch
                at = min(batch_size - held, len(idx))
                pending.append((columns, idx[:at]))
                held += at
                if held < batch_size:
                    continue
                yield _batch(pending, device)
                pending, held = [], 0
            while at + batch_size <= len(idx):
                yield _batch([(columns, idx[at : at + batch_size])], device)
                at += batch_size
            if at < len(idx):
                pending, held = [(columns, idx[at:])], len(idx) - at
        if held and not drop_last:
            yield _batch(pending, device)

    def _prefetched(self, segments: list) -> Iterator[tuple[Columns, object]]:
        """(columns, segment) for each segment, the next shard fetched on a thread while
        the caller iterates the current one."""
        ids = [self.specs[s.shard].shard_id for s in segments]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch") as pool:
            ahead = pool.submit(self.reader.get, ids[0]) if ids else None
            for i, segment in enumerate(segments):
                columns = ahead.result()
                ahead = pool.submit(self.reader.get, ids[i + 1]) if i + 1 < len(ids) else None
                yield columns, segment


def _batch(parts: list[tuple[Columns, np.ndarray]], device) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of each part's columns as torch tensors (the gather copies: a batch is
    writable and owns its memory, the shard stays read-only)."""
    names = parts[0][0].keys()
    if len(parts) == 1:
        columns, idx = parts[0]
        out = {k: torch.from_numpy(columns[k][idx]) for k in names}
    else:
        out = {k: torch.from_numpy(np.concatenate([c[k][i] for c, i in parts])) for k in names}
    if device is not None and str(device) != "cpu":
        out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    return out
