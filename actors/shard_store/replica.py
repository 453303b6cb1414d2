"""A replica: the actor on one node that holds its copies of a dataset's shards.

Each shard it holds is one object it put into the object store itself, so the copy lives
exactly as long as this actor: Ray does not rebuild a ``ray.put`` object whose owner died.
That is why replication is explicit: another replica, on another node, holds its own copy.
Readers ask for the object's reference and get the arrays zero-copy from shared memory
(pulled to their node first when the replica is elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from actors.exceptions import ShardNotHeld
from actors.shard_store.shard import ShardSpec, load


class ShardReplica:
    """Holds shards of one dataset on one node (made remote, pinned to it, by the group).

    Args:
        group: The group's name (its dataset), for messages.
        node_id: The node this replica is pinned to.
        datacenter: That node's datacenter, "" when unlabelled.
        put: How a shard's columns become an object (``ray.put``; tests pass another).
    """

    def __init__(self, group: str, node_id: str, datacenter: str, put: Callable = ray.put) -> None:
        self.group, self.node_id, self.datacenter = group, node_id, datacenter
        self._put = put
        self._refs: dict[str, ray.ObjectRef] = {}

    def load(self, specs: list[ShardSpec]) -> list[str]:
        """Read ``specs`` from storage, each checked against its SHA-256; the ids held."""
        for spec in specs:
            if spec.shard_id not in self._refs:
                self._refs[spec.shard_id] = self._put(load(spec, self.node_id, self.datacenter))
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
                return "replica"
            except (ray.exceptions.RayError, ShardNotHeld):
                continue
        self.load([spec])
        return "storage"

    def drop(self, shard_id: str) -> None:
        self._refs.pop(shard_id, None)

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
