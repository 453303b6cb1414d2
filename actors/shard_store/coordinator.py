"""The group's coordinator: places replicas, watches nodes, re-replicates after a loss.

One coordinator per group (named ``shards:<group>:coordinator``), one replica actor per
node it uses (``shards:<group>:replica:<datacenter>:<node id, 8 hex>``), all in the
``aimass-shards`` namespace, so the Ray dashboard's actor list says what each one holds.
Replicas are pinned to their node (hard node affinity) and detached, so neither a node's
loss nor the coordinator's takes more than that one actor with it. The watch loop keeps or
re-creates the factor: a surviving replica copies the shard from another survivor, or reads
it from storage (checked against the manifest) when none is left.

The coordinator holds no state that the replicas do not: Ray restarts it (the group sets
``max_restarts=-1``), and the new one finds the group's replicas by name, asks each what it
holds, and repairs from there. Readers hold replica handles, so reads go on meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.shard_store.names import NAMESPACE, replica_name, replica_prefix
from actors.shard_store.plan import Node, place
from actors.shard_store.replica import ShardReplica
from actors.shard_store.shard import ShardSpec
from cluster.topology import datacenter_of

STOP_TIMEOUT_S = 30.0


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


Found = tuple[ReplicaInfo, ray.actor.ActorHandle, dict[str, str]]
"""A live replica of a group: its info, handle, and shard id -> SHA-256 held."""


def found_replicas(group: str) -> list[Found]:
    """The group's live replica actors, found by name, and what each holds."""
    out = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != NAMESPACE or not entry["name"].startswith(replica_prefix(group)):
            continue
        try:
            handle = ray.get_actor(entry["name"], namespace=NAMESPACE)
            node_id, datacenter, held = ray.get(handle.describe.remote(), timeout=10)
        except (ValueError, ray.exceptions.RayError):
            continue  # ended meanwhile: the first repair replaces what it held
        out.append((ReplicaInfo(entry["name"], node_id, datacenter), handle, held))
    return out


class ShardStoreCoordinator:
    """Owns a group's replicas and their placement (made remote, threaded, by the group).

    Args:
        group: The group's name (its dataset's name unless told otherwise).
        specs: The shards the group holds.
        factor: Replicas per shard, on distinct nodes (datacenters first).
        datacenter: Keep every replica in this datacenter ("": anywhere).
        watch_interval_s: As an actor: take back the group's live replicas (there are some
            when Ray restarted this coordinator) and repair every this many seconds.
            None (tests): neither.
    """

    def __init__(
        self,
        group: str,
        specs: list[ShardSpec],
        factor: int,
        datacenter: str = "",
        watch_interval_s: float | None = None,
    ) -> None:
        self.group, self.factor, self.datacenter = group, factor, datacenter
        self.specs = {s.shard_id: s for s in specs}
        self.replicas: dict[str, tuple[ReplicaInfo, ray.actor.ActorHandle]] = {}
        self.holders: dict[str, list[str]] = {s: [] for s in self.specs}
        self.repairs = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if watch_interval_s is not None:
            adopted = self.adopt(found_replicas(group))
            if adopted:
                print(f"[shards] {group}: took back {adopted} replicas", flush=True)
            self._watch(watch_interval_s)

    def adopt(self, found: list[Found]) -> int:
        """Take ``found`` replicas (``found_replicas``) into the placement: each shard it
        holds with the manifest's SHA-256 counts as a replica; one it holds of another
        manifest (a group of the same name before) is dropped. Returns replicas taken."""
        with self._lock:
            for info, handle, held in found:
                if info.node_id in self.replicas:
                    continue
                self.replicas[info.node_id] = (info, handle)
                for shard_id, sha256 in held.items():
                    spec = self.specs.get(shard_id)
                    if spec is not None and spec.sha256 == sha256:
                        self.holders[shard_id].append(info.node_id)
                    else:
                        handle.drop.remote(shard_id)
            return len(found)

    # --- placement ------------------------------------------------------------------------

    def repair(self) -> dict[str, int]:
        """Bring every shard back to the factor on alive nodes (the first call loads the
        group). Returns counts of what it did."""
        with self._lock:
            nodes = alive_nodes()
            lost = self._drop_lost({n.node_id for n in nodes})
            plan = place(list(self.specs), nodes, self.factor, self.holders, self.datacenter)
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
                    # Not owned by this coordinator, so it outlives a coordinator restart;
                    # its lease ends it once the group's coordinator is gone for good.
                    lifetime="detached",
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                )
                .remote(self.group, node.node_id, node.datacenter, lease=True)
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

    def _watch(self, interval_s: float) -> None:
        """Repair every ``interval_s`` until ``stop``; runs on a thread of its own."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.repair()
                except Exception as err:  # noqa: BLE001 - keep watching; the next round retries
                    print(f"[shards] {self.group}: repair failed: {err!r}", flush=True)

        threading.Thread(target=loop, name=f"shards-{self.group}-watch", daemon=True).start()

    def stop(self) -> None:
        """End every replica, and return once their names are free: a group of the same
        name (a resumed run) may start at once."""
        self._stop.set()
        with self._lock:
            for _, handle in self.replicas.values():
                ray.kill(handle)
            names = [info.name for info, _ in self.replicas.values()]
            self.replicas.clear()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name in names:
            while time.monotonic() < deadline:
                try:
                    ray.get_actor(name, namespace=NAMESPACE)
                except ValueError:
                    break
                time.sleep(0.05)
