"""A replica: the actor on one node that holds its copies of a dataset's shards.

Each shard it holds is one object it put into the object store itself, so the copy lives
exactly as long as this actor: Ray does not rebuild a ``ray.put`` object whose owner died.
That is why replication is explicit: another replica, on another node, holds its own copy.
Readers ask for the object's reference and get the arrays zero-copy from shared memory
(pulled to their node first when the replica is elsewhere).

A replica outlives its coordinator (the group makes it detached), so a coordinator that
restarts finds its replicas, and their shards, where they were. It holds a lease instead:
once no coordinator of its group exists any more (stopped, or ended with its job), the
replica ends itself, so nothing is left holding object-store memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import ray

from actors.exceptions import ShardNotHeld
from actors.shard_store.names import NAMESPACE, coordinator_name
from actors.shard_store.shard import ShardSpec, load

LEASE_INTERVAL_S = 5.0
"""Seconds between a replica's checks that its coordinator still exists; it ends itself
after two misses in a row (a restarting coordinator keeps its name, so it is no miss)."""


class ShardReplica:
    """Holds shards of one dataset on one node (made remote, pinned to it, by the group).

    Args:
        group: The group's name (its dataset), for messages.
        node_id: The node this replica is pinned to.
        datacenter: That node's datacenter, "" when unlabelled.
        put: How a shard's columns become an object (``ray.put``; tests pass another).
        lease: Hold the lease on the group's coordinator (a remote replica); False in tests.
    """

    def __init__(
        self,
        group: str,
        node_id: str,
        datacenter: str,
        put: Callable = ray.put,
        lease: bool = False,
    ) -> None:
        self.group, self.node_id, self.datacenter = group, node_id, datacenter
        self._put = put
        self._refs: dict[str, ray.ObjectRef] = {}
        self._sha256: dict[str, str] = {}  # shard id -> the manifest's SHA-256 of what is held
        if lease:
            threading.Thread(target=self._hold_lease, name="shard-lease", daemon=True).start()

    def load(self, specs: list[ShardSpec]) -> list[str]:
        """Read ``specs`` from storage, each checked against its SHA-256; the ids held."""
        for spec in specs:
            if spec.shard_id not in self._refs:
                self._refs[spec.shard_id] = self._put(load(spec, self.node_id, self.datacenter))
                self._sha256[spec.shard_id] = spec.sha256
        return self.held()

    def copy_from(self, spec: ShardSpec, sources: list) -> str:
        """Take a copy of ``spec`` from the first of ``sources`` (replica handles) that
        answers; from storage (verified) when none does. Returns where it came from."""
        if spec.shard_id in self._refs:
            return "held"
        for source in sources:
            try:
                [ref] = ray.get(source.ref.remote(spec.shard_id), timeout=30)
                # The arrays map the source's object read-only; put() writes our own copy.
                self._refs[spec.shard_id] = self._put(ray.get(ref, timeout=60))
                self._sha256[spec.shard_id] = spec.sha256
                return "replica"
            except (ray.exceptions.RayError, ShardNotHeld):
                continue
        self.load([spec])
        return "storage"

    def drop(self, shard_id: str) -> None:
        self._refs.pop(shard_id, None)
        self._sha256.pop(shard_id, None)

    def ref(self, shard_id: str) -> list[ray.ObjectRef]:
        """``[ref]`` of the shard's object (in a list, so Ray hands back the reference
        rather than resolving it).

        Raises:
            ShardNotHeld: This replica does not hold ``shard_id``.
        """
        try:
            return [self._refs[shard_id]]
        except KeyError:
            raise ShardNotHeld(
                f"Replica of {self.group} on node {self.node_id[:12]} does not hold shard "
                f"{shard_id}; ask the group's coordinator where it is.",
                shard_id,
                self.node_id,
                self.datacenter,
            ) from None

    def held(self) -> list[str]:
        return sorted(self._refs)

    def ping(self) -> str:
        return self.node_id

    def describe(self) -> tuple[str, str, dict[str, str]]:
        """(node id, datacenter, shard id -> SHA-256 held): what a restarted coordinator
        needs to take this replica back."""
        return self.node_id, self.datacenter, dict(self._sha256)

    def _hold_lease(self) -> None:
        misses = 0
        while True:
            time.sleep(LEASE_INTERVAL_S)
            try:
                ray.get_actor(coordinator_name(self.group), namespace=NAMESPACE)
                misses = 0
            except ValueError:  # no such actor: dead for good, not restarting
                misses += 1
            if misses >= 2:
                print(f"[shards] {self.group}: no coordinator; replica ends", flush=True)
                ray.kill(ray.get_runtime_context().current_actor)
                return
