"""Starting, finding, listing and stopping a ShardStore group."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray

from actors.shard_store.coordinator import ShardStoreCoordinator
from actors.shard_store.names import NAMESPACE, coordinator_name
from actors.shard_store.shard import shard_specs
from cluster.topology import HEAD_RESOURCE
from models.dataset import SPLITS, Manifest

WATCH_INTERVAL_S = 1.0


def start(
    manifest: Manifest,
    *,
    group: str | None = None,
    splits: tuple[str, ...] = SPLITS,
    factor: int = 2,
    datacenter: str = "",
    detached: bool = False,
) -> ray.actor.ActorHandle:
    """Start a group holding ``splits`` of ``manifest`` with ``factor`` replicas per shard;
    returns its coordinator once every shard is loaded (and checked), with the watch loop
    running. Keep the handle: Ray ends an actor that is not detached when its last handle
    goes, and the group with it.

    Args:
        group: The group's name (default: the dataset's); names its actors.
        datacenter: Keep every replica on nodes of this datacenter ("": anywhere).
        detached: Outlive the job that starts it (``stop`` ends it); otherwise it ends
            with the job.

    Raises:
        ShardChecksumError: A shard on storage fails its SHA-256 check.
    """
    name = group or manifest.data["dataset"]
    coordinator = (
        ray.remote(ShardStoreCoordinator)
        .options(
            name=coordinator_name(name),
            namespace=NAMESPACE,
            num_cpus=0,
            max_concurrency=8,  # the watch loop, repairs and readers' location queries
            # Restarted whenever it dies; it rebuilds its view from the replicas. Calls made
            # meanwhile (a reader asking for locations) wait for the new one.
            max_restarts=-1,
            max_task_retries=-1,
            lifetime="detached" if detached else None,
            # On the head: it holds the GCS, so the cluster ends with it anyway (no GCS
            # fault tolerance here), and the autoscaler never removes it, while workers,
            # where the data lives, come and go. A worker's loss then never takes the
            # coordinator along with replicas it must repair.
            resources={HEAD_RESOURCE: 0.001},
        )
        .remote(name, shard_specs(manifest, splits), factor, datacenter, WATCH_INTERVAL_S)
    )
    ray.get(coordinator.repair.remote())
    return coordinator


@contextmanager
def running(manifest: Manifest, **options) -> Iterator[str]:
    """A group started (``start``'s options) for the block, stopped after it; yields its
    name."""
    name = options.get("group") or manifest.data["dataset"]
    coordinator = start(manifest, **options)  # noqa: F841 - held: the group lives with it
    try:
        yield name
    finally:
        stop(name)


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
