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
# The resource only the head node has (ray._common.constants.HEAD_NODE_RESOURCE_NAME);
# asking for a sliver of it places an actor there, as Ray Train's own state actor does.
HEAD_RESOURCE = "node:__internal_head__"


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


# Round trips between common regions, in milliseconds (typical public-cloud figures between
# the regions' main sites). A topology may give its own; a pair it does not know counts as
# the farthest, so an unmeasured datacenter is tried last, never first.
DEFAULT_RTT_MS: dict[tuple[str, str], float] = {
    ("us-east", "us-west"): 65.0,
    ("us-east", "eu-west"): 75.0,
    ("us-east", "eu-central"): 90.0,
    ("us-east", "ap-south"): 190.0,
    ("us-east", "ap-northeast"): 150.0,
    ("us-west", "eu-west"): 140.0,
    ("us-west", "eu-central"): 150.0,
    ("us-west", "ap-south"): 220.0,
    ("us-west", "ap-northeast"): 100.0,
    ("eu-west", "eu-central"): 20.0,
    ("eu-west", "ap-south"): 120.0,
    ("eu-west", "ap-northeast"): 210.0,
    ("eu-central", "ap-south"): 110.0,
    ("eu-central", "ap-northeast"): 220.0,
    ("ap-south", "ap-northeast"): 120.0,
}


@dataclass(frozen=True, slots=True)
class Topology:
    """The datacenters of a deployment and how far apart they are.

    Attributes:
        datacenters: Region names, in the order they were given.
        rtt_ms: Round trip between two regions, keyed by the sorted pair; symmetric.
    """

    datacenters: tuple[str, ...]
    rtt_ms: dict[tuple[str, str], float]

    @classmethod
    def of(
        cls, datacenters: list[str] | tuple[str, ...], rtt_ms: dict[str, dict[str, float]] | None
    ) -> Topology:
        """A topology of ``datacenters`` with round trips ``rtt_ms[a][b]`` (either direction
        suffices), falling back to ``DEFAULT_RTT_MS`` for pairs not given."""
        names = tuple(dict.fromkeys(datacenters))
        for name in names:
            Datacenter(region=name, zone=f"{name}-a")  # the same name rules as node labels
        given = {
            tuple(sorted((a, b))): float(ms)
            for a, row in (rtt_ms or {}).items()
            for b, ms in row.items()
            if a != b
        }
        for (a, b), ms in given.items():
            if a not in names or b not in names:
                raise ValueError(
                    f"rtt_ms names {a!r} and {b!r}; both must be datacenters of the topology "
                    f"({', '.join(names)})."
                )
            if ms < 0:
                raise ValueError(f"rtt_ms[{a!r}][{b!r}] = {ms}: a round trip cannot be negative.")
        known = {
            tuple(sorted(pair)): ms
            for pair, ms in DEFAULT_RTT_MS.items()
            if pair[0] in names and pair[1] in names
        }
        return cls(datacenters=names, rtt_ms={**known, **given})

    def rtt(self, a: str, b: str) -> float:
        """Round trip between two datacenters: 0 within one, inf when never measured."""
        return 0.0 if a == b else self.rtt_ms.get(tuple(sorted((a, b))), float("inf"))

    def nearest_first(self, origin: str, among: tuple[str, ...] | None = None) -> list[str]:
        """``among`` (default: all) from ``origin`` outwards; ties go by name, so every
        gateway replica tries datacenters in the same order."""
        candidates = self.datacenters if among is None else among
        return sorted(candidates, key=lambda dc: (self.rtt(origin, dc), dc))

    def check(self, name: str, field: str) -> str:
        """``name`` when it is one of the datacenters; otherwise a ValueError naming ``field``."""
        if name not in self.datacenters:
            raise ValueError(
                f"{field}: unknown datacenter {name!r}; this cluster has "
                f"{', '.join(self.datacenters) or 'none'}."
            )
        return name
