"""The group's coordinator: places replicas, watches nodes, re-replicates after a loss.

One coordinator per group (named ``shards:<group>:coordinator``), one replica actor per
node it uses (``shards:<group>:replica:<datacenter>:<node id, 8 hex>``), all in the
``aimass-shards`` namespace, so the Ray dashboard's actor list says what each one holds.
Replicas are pinned to their node (hard node affinity) and owned by the coordinator: they
end with it, and a node's loss ends only that node's replica. The watch loop then keeps or
re-creates the factor: a surviving replica copies the shard from another survivor, or reads
it from storage (checked against the manifest) when none is left.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.shard_store.plan import Node, place
from actors.shard_store.replica import ShardReplica
from actors.shard_store.shard import ShardSpec
from cluster.topology import datacenter_of

NAMESPACE = "aimass-shards"


def coordinator_name(group: str) -> str:
    return f"shards:{group}:coordinator"


def replica_name(group: str, node: Node) -> str:
    return f"shards:{group}:replica:{node.datacenter or 'unlabelled'}:{node.node_id[:8]}"


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A replica actor as readers and ``aimass status`` see it."""

    name: str
    node_id: str
    datacenter: str


def alive_nodes() -> list[Node]:
    """The cluster's alive nodes with their datacenter labels."""
    return [
        Node(n["NodeID"], datacenter_of(n.get("Labels") or {}) or "")
        for n in ray.nodes()
        if n["Alive"]
    ]


class ShardStoreCoordinator:
    """Owns a group's replicas and their placement (made remote, threaded, by the group).

    Args:
        group: The group's name (its dataset's name unless told otherwise).
        specs: The shards the group holds.
        factor: Replicas per shard, on distinct nodes (datacenters first).
    """

    def __init__(self, group: str, specs: list[ShardSpec], factor: int) -> None:
        self.group, self.factor = group, factor
        self.specs = {s.shard_id: s for s in specs}
        self.replicas: dict[str, tuple[ReplicaInfo, ray.actor.ActorHandle]] = {}
        self.holders: dict[str, list[str]] = {s: [] for s in self.specs}
        self.repairs = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # --- placement ------------------------------------------------------------------------

    def repair(self) -> dict[str, int]:
        """Bring every shard back to the factor on alive nodes (the first call loads the
        group). Returns counts of what it did."""
        with self._lock:
            nodes = alive_nodes()
            lost = self._drop_lost({n.node_id for n in nodes})
            plan = place(list(self.specs), nodes, self.factor, self.holders)
            adds = plan.additions(self.holders)
            by_id = {n.node_id: n for n in nodes}
            pending = []
            for shard, node_id in adds:
                handle = self._replica(by_id[node_id])
                sources = [self.replicas[n][1] for n in self.holders[shard]]
                done = handle.copy_from.remote(self.specs[shard], sources)
                pending.append((shard, node_id, done))
            for shard, node_id, done in pending:
                ray.get(done)  # a ShardChecksumError from storage surfaces here
                self.holders[shard].append(node_id)
            if lost or adds:
                self.repairs += 1
            return {"lost_replicas": lost, "added": len(adds), "short": len(plan.short)}

    def _replica(self, node: Node):
        if node.node_id not in self.replicas:
            info = ReplicaInfo(replica_name(self.group, node), node.node_id, node.datacenter)
            handle = (
                ray.remote(ShardReplica)
                .options(
                    name=info.name,
                    namespace=NAMESPACE,
                    num_cpus=0,
                    max_restarts=0,  # its objects die with it: a restart would hold nothing
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                )
                .remote(self.group, node.node_id, node.datacenter)
            )
            self.replicas[node.node_id] = (info, handle)
        return self.replicas[node.node_id][1]

    def _drop_lost(self, alive: set[str]) -> int:
        """Forget replicas on dead nodes or that no longer answer; how many."""
        lost = [n for n in self.replicas if n not in alive]
        for node_id in set(self.replicas) - set(lost):
            try:
                ray.get(self.replicas[node_id][1].ping.remote(), timeout=10)
            except ray.exceptions.RayError:
                lost.append(node_id)
        for node_id in lost:
            del self.replicas[node_id]
            for nodes in self.holders.values():
                if node_id in nodes:
                    nodes.remove(node_id)
        return len(lost)

    # --- what readers and operators ask ---------------------------------------------------

    def locations(self) -> dict[str, list[tuple[ReplicaInfo, ray.actor.ActorHandle]]]:
        """Shard id -> its replicas (info and handle), in placement order."""
        with self._lock:
            return {s: [self.replicas[n] for n in nodes] for s, nodes in self.holders.items()}

    def specs_of(self, split: str) -> list[ShardSpec]:
        return [s for s in self.specs.values() if s.split == split]

    def placement(self) -> list[dict]:
        """One row per replica: actor name, node id, datacenter label, shards held."""
        with self._lock:
            return [
                {
                    "actor": info.name,
                    "node_id": info.node_id,
                    "datacenter": info.datacenter,
                    "shards": sorted(s for s, nodes in self.holders.items() if node_id in nodes),
                }
                for node_id, (info, _) in sorted(self.replicas.items())
            ]

    def replication(self) -> dict[str, int]:
        """Shard id -> replicas it has now."""
        with self._lock:
            return {s: len(nodes) for s, nodes in self.holders.items()}

    # --- the watch loop -------------------------------------------------------------------

    def watch(self, interval_s: float) -> None:
        """Repair every ``interval_s`` until ``stop``; runs on a thread of its own."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.repair()
                except Exception as err:  # noqa: BLE001 - keep watching; the next round retries
                    print(f"[shards] {self.group}: repair failed: {err!r}", flush=True)

        threading.Thread(target=loop, name=f"shards-{self.group}-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for _, handle in self.replicas.values():
                ray.kill(handle)
            self.replicas.clear()
