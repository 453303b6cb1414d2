"""Starting, finding, listing and stopping a ShardStore group."""

from __future__ import annotations

import ray

from actors.shard_store.coordinator import NAMESPACE, ShardStoreCoordinator, coordinator_name
from actors.shard_store.shard import shard_specs
from models.dataset import SPLITS, Manifest

WATCH_INTERVAL_S = 1.0


def start(
    manifest: Manifest,
    *,
    group: str | None = None,
    splits: tuple[str, ...] = SPLITS,
    factor: int = 2,
    detached: bool = False,
) -> ray.actor.ActorHandle:
    """Start a group holding ``splits`` of ``manifest`` with ``factor`` replicas per shard;
    returns its coordinator once every shard is loaded (and checked), with the watch loop
    running. Keep the handle: Ray ends an actor that is not detached when its last handle
    goes, and the group with it.

    Args:
        group: The group's name (default: the dataset's); names its actors.
        detached: Outlive the job that starts it (``stop`` ends it); otherwise it ends
            with the job.

    Raises:
        ShardChecksumError: A shard on storage fails its SHA-256 check.
    """
    name = group or manifest.data["dataset"]
    here = ray.get_runtime_context().get_node_id()
    coordinator = (
        ray.remote(ShardStoreCoordinator)
        .options(
            name=coordinator_name(name),
            namespace=NAMESPACE,
            num_cpus=0,
            max_concurrency=8,  # the watch loop, repairs and readers' location queries
            lifetime="detached" if detached else None,
            # Near the caller (a job's driver on the head, usually), not on a node that
            # may be lost: the coordinator holds the placement.
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                here, soft=True
            ),
        )
        .remote(name, shard_specs(manifest, splits), factor)
    )
    ray.get(coordinator.repair.remote())
    ray.get(coordinator.watch.remote(WATCH_INTERVAL_S))
    return coordinator


def connect(group: str) -> ray.actor.ActorHandle:
    """The running group's coordinator."""
    return ray.get_actor(coordinator_name(group), namespace=NAMESPACE)


def placement(group: str) -> list[dict]:
    """The group's replicas: actor name, node id, datacenter label and shards held."""
    return ray.get(connect(group).placement.remote())


def stop(group: str) -> None:
    """End the group's replicas and coordinator (their shards leave the object store)."""
    coordinator = connect(group)
    ray.get(coordinator.stop.remote())
    ray.kill(coordinator)
