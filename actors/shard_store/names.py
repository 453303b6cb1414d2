"""What a group's actors are called: the one place their names and namespace are spelled.

The coordinator finds its replicas again by these names after a restart, and operators
find both in the Ray dashboard's actor list.
"""

from __future__ import annotations

from actors.shard_store.plan import Node

NAMESPACE = "aimass-shards"


def coordinator_name(group: str) -> str:
    return f"shards:{group}:coordinator"


def replica_prefix(group: str) -> str:
    return f"shards:{group}:replica:"


def replica_name(group: str, node: Node) -> str:
    return f"{replica_prefix(group)}{node.datacenter or 'unlabelled'}:{node.node_id[:8]}"
