"""Where a request is served: in its origin datacenter first, in the nearest others when
that one cannot answer, and never outside the datacenters its key or tenant is restricted to.

Pure decisions (``reach``, ``serving_order``) and the replica's view of each datacenter's
health (``DatacenterHealth``: replicas running, per the Serve controller; consecutive
failures seen here, which eject a datacenter for a while). The gateway carries them out
(``serve_apps._private.answers``).

Inside one cluster a datacenter is a Ray region (node label); each has its own Predictor
deployment (``Predictor-<region>``), placed there by ``label_selector`` and scaled on its own
demand. Saturation is Serve's own signal: a datacenter's deployment whose queue is full
(``max_queued_requests``) refuses at once (BackPressureError), and the request moves on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.topology import Topology
from serve_apps._private.http import ApiError
from serve_apps.keys import KeyRecord
from serve_apps.schemas import DatacenterPolicy

logger = logging.getLogger("ray.serve")

ORIGIN_HEADER = "X-Origin-Datacenter"
"""Set by the edge (and overwritten there, never taken from clients): where the request
entered. Without it, a request's origin is its key's home, else the gateway's own region."""
SERVED_HEADER = "X-Served-Region"
"""On every answer a model gave: the datacenter whose replica answered."""


@dataclass(frozen=True, slots=True)
class Reach:
    """Where one request comes from and where it may be served.

    Attributes:
        origin: The datacenter it entered (or is homed to).
        allowed: The datacenters it may be served in; None: any.
        restriction: Who restricted it, for the message when none of them can serve
            (e.g. "key 3f2a… is restricted to eu-west").
    """

    origin: str
    allowed: frozenset[str] | None = None
    restriction: str = ""


def reach(
    topology: Topology,
    header: str | None,
    home: str | None,
    key_datacenters: tuple[str, ...] | None,
    tenant_datacenters: tuple[str, ...] | None,
    default: str,
    who: str,
) -> Reach:
    """A request's Reach.

    Args:
        topology: The cluster's datacenters.
        header: The edge's ``X-Origin-Datacenter``, if any (400 when it names none).
        home: The key's home datacenter (user-based allocation): served there first.
        key_datacenters: The key's residency, if restricted.
        tenant_datacenters: Its tenant's residency, if restricted.
        default: Where requests without an origin come from (the gateway's region).
        who: The key (and tenant) named in messages.
    """
    if header:
        if header not in topology.datacenters:
            raise ApiError(
                400,
                "unknown_datacenter",
                f"{ORIGIN_HEADER} names {header[:64]!r}, not one of this cluster's datacenters "
                f"({', '.join(topology.datacenters)}).",
            )
        origin = header
    else:
        origin = home or default
    restricted = [set(d) for d in (key_datacenters, tenant_datacenters) if d is not None]
    if not restricted:
        return Reach(origin)
    allowed = frozenset(set.intersection(*restricted))
    places = ", ".join(sorted(allowed)) or "no datacenter (key and tenant share none)"
    return Reach(origin, allowed, f"{who} is restricted to {places}")


def serving_order(
    request: Reach, topology: Topology, usable: Callable[[str], bool]
) -> tuple[str, ...]:
    """The datacenters to try, in order: the origin, then outwards by round trip; only
    those allowed and usable now. Raises 503 (with ``Retry-After``) when none is left,
    naming the restriction when there is one: a restricted request is refused rather than
    served elsewhere."""
    allowed = tuple(
        dc for dc in topology.datacenters if request.allowed is None or dc in request.allowed
    )
    order = tuple(dc for dc in topology.nearest_first(request.origin, allowed) if usable(dc))
    if not order:
        detail = (
            f"{request.restriction}, and no replica there can answer now."
            if request.restriction
            else "No datacenter can answer now."
        )
        raise ApiError(503, "no_datacenter", detail, {"Retry-After": "1"})
    return order


@dataclass
class DatacenterHealth:
    """One gateway replica's view of which datacenters can serve.

    A datacenter is usable while the Serve controller reports replicas running there and it
    is not ejected; ``eject_after`` failed answers in a row eject it for ``eject_for_s``
    (Envoy's outlier ejection): after that, one request tries it again, and a success
    clears it. The controller's report (``running``) is refreshed off the request path.
    """

    eject_after: int = 2
    eject_for_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    running: dict[str, int] | None = None  # None: no report yet (every datacenter usable)
    _failures: dict[str, int] = field(default_factory=dict)
    _ejected_until: dict[str, float] = field(default_factory=dict)

    def usable(self, dc: str) -> bool:
        if self.running is not None and self.running.get(dc, 0) == 0:
            return False
        return self.clock() >= self._ejected_until.get(dc, float("-inf"))

    def failed(self, dc: str) -> None:
        self._failures[dc] = self._failures.get(dc, 0) + 1
        if self._failures[dc] >= self.eject_after:
            self._ejected_until[dc] = self.clock() + self.eject_for_s

    def succeeded(self, dc: str) -> None:
        self._failures.pop(dc, None)
        self._ejected_until.pop(dc, None)

    def ejected(self) -> list[str]:
        now = self.clock()
        return sorted(dc for dc, until in self._ejected_until.items() if until > now)


def predictor_name(datacenter: str) -> str:
    """The Predictor deployment of a datacenter (``args.datacenters`` of the application)."""
    return f"Predictor-{datacenter}"


class Datacenters:
    """A gateway replica's datacenters: where each request may go, in which order.

    Args:
        names: The application's datacenters (one Predictor deployment each), in the order
            given; the first is the origin of requests that name none when the gateway's
            own region is not one of them.
        policy: Round trips, tenant residency, ejection (``DatacenterPolicy``).
        own_region: The region of the node this replica runs on.
    """

    def __init__(self, names: tuple[str, ...], policy: DatacenterPolicy, own_region: str | None):
        self.names = names
        self.default = own_region if own_region in names else names[0]
        self.health = DatacenterHealth()
        self.reconfigure(policy)

    def reconfigure(self, policy: DatacenterPolicy) -> None:
        """Apply a policy; a ValueError naming the field when it names unknown datacenters."""
        topology = Topology.of(self.names, policy.rtt_ms)
        for tenant, places in policy.tenants.items():
            for i, dc in enumerate(places):
                topology.check(dc, f"datacenters.tenants.{tenant}[{i}]")
        self.topology, self.policy = topology, policy
        self.health.eject_after = policy.eject_after_failures
        self.health.eject_for_s = policy.eject_for_s

    def order(self, header: str | None, key: KeyRecord) -> tuple[str, tuple[str, ...]]:
        """The origin and serving order of a request presenting ``key`` (see ``reach``)."""
        tenant_places = self.policy.tenants.get(key.tenant) if key.tenant else None
        who = f"key {key.id}" + (f" (tenant {key.tenant})" if tenant_places is not None else "")
        home = key.home if key.home in self.names else None
        request = reach(
            self.topology, header, home, key.datacenters, tenant_places, self.default, who
        )
        return request.origin, serving_order(request, self.topology, self.health.usable)


async def read_replicas(
    health: DatacenterHealth,
    app: str,
    deployments: dict[str | None, str],
    read_status: Callable[[], object],
) -> None:
    """Set ``health.running`` once: RUNNING replicas of each datacenter's Predictor
    (``deployments``: datacenter, or None without datacenters, -> deployment name), read
    from the Serve controller. A failed read keeps the last view."""
    try:
        status = await asyncio.to_thread(read_status)
        found = status.applications[app].deployments
        health.running = {
            dc: found[name].replica_states.get("RUNNING", 0)
            for dc, name in deployments.items()
            if name in found
        }
    except Exception as err:  # keep the last view; the next poll may succeed
        logger.warning("could not read the Predictor replicas: %r", err)


async def watch_replicas(
    health: DatacenterHealth,
    app: str,
    deployments: dict[str | None, str],
    read_status: Callable[[], object],
    period_s: Callable[[], float],
) -> None:
    """Keep ``health.running`` current every ``period_s()`` seconds, off the request path:
    a lost datacenter leaves the serving order within a poll, and readiness follows
    replicas."""
    while True:
        await read_replicas(health, app, deployments, read_status)
        await asyncio.sleep(period_s())
