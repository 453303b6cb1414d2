"""Datacenters and the node labels that name them: the one module that spells label keys.

A datacenter is a Ray region; its zones are Ray availability zones. Both are Ray's own
default node labels, set on a node by ``RAY_NODE_REGION`` / ``RAY_NODE_ZONE`` when its
raylet starts, so KubeRay, the cluster launcher and ``ray start`` all label nodes the same
way. Placement selects nodes with ``label_selector`` (tasks, actors, Serve
``ray_actor_options``, Train ``ScalingConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

# Ray's reserved default labels (ray._raylet.RAY_NODE_REGION_KEY / RAY_NODE_ZONE_KEY).
REGION_LABEL = "ray.io/availability-region"
ZONE_LABEL = "ray.io/availability-zone"
# Environment variables a raylet reads at start to set the two labels above.
REGION_ENV = "RAY_NODE_REGION"
ZONE_ENV = "RAY_NODE_ZONE"


@dataclass(frozen=True, slots=True)
class Datacenter:
    """One datacenter: a Ray region, and the zone a node started here joins.

    Attributes:
        region: Region name, e.g. ``"eu-west"``; the value of ``REGION_LABEL``.
        zone: Zone name within the region, e.g. ``"eu-west-a"``; the value of ``ZONE_LABEL``.
    """

    region: str
    zone: str

    def __post_init__(self) -> None:
        for field, value in (("region", self.region), ("zone", self.zone)):
            if not value or not value.replace("-", "").replace("_", "").isalnum():
                raise ValueError(
                    f"Datacenter {field} {value!r} must be a non-empty name of letters, "
                    "digits, '-' or '_' (it becomes a Ray node label value)."
                )

    def node_env(self) -> dict[str, str]:
        """Environment for ``ray start`` that labels the node as part of this datacenter."""
        return {REGION_ENV: self.region, ZONE_ENV: self.zone}

    def label_selector(self) -> dict[str, str]:
        """A Ray ``label_selector`` that keeps work inside this datacenter."""
        return {REGION_LABEL: self.region}


def datacenter_of(node_labels: dict[str, str]) -> str | None:
    """The datacenter (region) a node belongs to, from its Ray labels; None if unlabelled."""
    return node_labels.get(REGION_LABEL)
