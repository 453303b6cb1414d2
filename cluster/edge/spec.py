"""The edge spec: clusters behind the edge, its entry points, and how traffic moves
between them; read from YAML, every field checked and described (``EdgeSpec``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cluster.exceptions import ClusterError
from cluster.topology import Datacenter, Topology

ORIGIN_HEADER = "X-Origin-Datacenter"
"""The header a region's frontend sets (the gateway reads it: serve_apps' datacenters)."""
KEY_PATTERN = r"^amk_[0-9a-f]{12}_[A-Za-z0-9_-]{20,100}$"
"""An API key as the gateway accepts it (serve_apps.keys; a unit test holds the two equal).
Spelled here because the cluster core must not import serve_apps."""
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
"""A client's X-Request-ID the gateway echoes (serve_apps' safe request id; tested equal)."""
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")


def _datacenter_name(value: str) -> str:
    Datacenter(region=value, zone=f"{value}-a")  # the rules of Ray label values
    return value


DatacenterName = Annotated[str, AfterValidator(_datacenter_name)]


def _bind(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `bind: 8080` in YAML
    if isinstance(value, str):
        bind_address(value, "127.0.0.1")  # a port that is no port fails here, by name
    return value


Bind = Annotated[str, BeforeValidator(_bind)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterSpec(_Strict):
    """One Ray cluster behind the edge."""

    name: str = Field(
        description="Its name at the edge (HAProxy's server name; `aimass edge weight NAME`): "
        "a letter, then letters, digits, '_', '.' or '-'."
    )
    datacenter: DatacenterName = Field(description="The datacenter (Ray region) it runs in.")
    url: str = Field(
        description="Its model API (Serve's HTTP port), http://host:port or https://host:port."
    )
    weight: int = Field(
        100, ge=0, le=256, description="Its share in weighted splits (0-256; 0 takes none)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} must start with a letter and hold only letters, digits, '_', '.' "
                "or '-' (at most 63): it names an HAProxy server."
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r}: give http://host:port (or https://host:port).")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(
                f"{value!r}: only scheme, host and port; the model API's routes start at /."
            )
        _ = parts.port  # a port that is not a number fails here
        return value.rstrip("/")

    @property
    def address(self) -> str:
        """``host:port`` as HAProxy's ``server`` line wants it."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        return f"{host}:{port}"

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"


class FrontendSpec(_Strict):
    """A region's entry point: its clients' requests enter there."""

    datacenter: DatacenterName = Field(description="The region whose clients enter here.")
    bind: Bind = Field(
        description="PORT, or ADDRESS:PORT (default address: the spec's host, 127.0.0.1)."
    )


class GlobalFrontendSpec(_Strict):
    """One entry point for everyone: a weighted split over every cluster."""

    bind: Bind = Field(description="PORT, or ADDRESS:PORT.")


class HealthSpec(_Strict):
    """Active health checks, one per cluster."""

    interval_s: float = Field(1.0, gt=0, le=60, description="Seconds between checks.")
    timeout_s: float = Field(1.0, gt=0, le=60, description="How long one check may take.")
    fall: int = Field(2, ge=1, le=20, description="Failed checks in a row that mark it down.")
    rise: int = Field(2, ge=1, le=20, description="Passed checks in a row that mark it up.")
    ready_model: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$",
        description="Readiness is GET /readyz?model=<this> (its replicas run); none: "
        "GET /readyz (any model).",
    )


class OutlierSpec(_Strict):
    """Ejection on live answers (HAProxy ``observe layer7``), before checks notice."""

    consecutive_5xx: int = Field(
        3, ge=1, le=100, description="Failed answers in a row (5xx, or none) that eject it."
    )
    on_error: str = Field(
        "mark-down",
        pattern="^(mark-down|fail-check|sudden-death|fastinter)$",
        description="What they do: mark-down (out until checks pass `rise` times), "
        "sudden-death, fail-check or fastinter (HAProxy's on-error).",
    )


class FailoverSpec(_Strict):
    """Priority failover between datacenters."""

    healthy_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A datacenter keeps its region's traffic while at least this share of "
        "its clusters is up; below it, the next datacenter that meets it takes over.",
    )


class TimeoutSpec(_Strict):
    """HAProxy's timeouts; a cluster that does not answer in ``server_s`` gets a 504."""

    connect_s: float = Field(2.0, gt=0, le=60, description="To open a connection to a cluster.")
    server_s: float = Field(
        35.0, gt=0, le=600, description="For a cluster's answer (above Serve's 30 s)."
    )
    client_s: float = Field(30.0, gt=0, le=600, description="For a client's next bytes.")
    http_request_s: float = Field(10.0, gt=0, le=600, description="For a whole request head.")
    queue_s: float = Field(5.0, gt=0, le=600, description="In the queue for a free slot.")


class ResidencySpec(_Strict):
    """Which API keys stay in which datacenters."""

    keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Key id (the 12 hex digits of amk_<id>_...) -> its datacenters.",
    )
    key_stores: list[str] = Field(
        default_factory=list,
        description="Storage roots (AIMASS_STORAGE_URI of clusters) whose API keys' "
        "residency (`aimass keys create --datacenter`) the edge enforces too.",
    )

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: dict[str, list[str]]) -> dict[str, list[str]]:
        for key_id, datacenters in keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"{key_id!r}: a key id is the 12 hex digits of amk_<id>_….")
            if not datacenters:
                raise ValueError(f"{key_id}: name at least one datacenter.")
        return keys


class EdgeSpec(_Strict):
    """The edge: clusters, entry points, and how traffic moves between them."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    host: str = Field(
        "127.0.0.1",
        description="Address frontends bind to unless theirs names one (0.0.0.0: explicit).",
    )
    clusters: list[ClusterSpec] = Field(min_length=1, description="The clusters behind it.")
    frontends: list[FrontendSpec] = Field(
        default_factory=list, description="One per region entry point."
    )
    global_frontend: GlobalFrontendSpec | None = Field(
        None, alias="global", description="An entry point split by weight over every cluster."
    )
    health: HealthSpec = Field(default_factory=HealthSpec)
    outliers: OutlierSpec = Field(default_factory=OutlierSpec)
    failover: FailoverSpec = Field(default_factory=FailoverSpec)
    timeouts: TimeoutSpec = Field(default_factory=TimeoutSpec)
    residency: ResidencySpec = Field(default_factory=ResidencySpec)
    rtt_ms: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Round trips between datacenters (ms); cluster/topology.py has defaults.",
    )
    max_connections: int = Field(4096, ge=16, le=1_000_000, description="HAProxy's maxconn.")
    ca_file: str = Field(
        "/etc/ssl/certs/ca-certificates.crt",
        description="CA bundle that verifies https:// clusters (Debian's system bundle).",
    )
    slowstart_s: float = Field(
        0, ge=0, le=600, description="A cluster back up ramps its weight up over this long."
    )

    @model_validator(mode="after")
    def _consistent(self) -> EdgeSpec:
        _unique([c.name for c in self.clusters], "clusters", "name")
        _unique([f.datacenter for f in self.frontends], "frontends", "datacenter")
        binds = [bind_address(f.bind, self.host) for f in self.frontends]
        if self.global_frontend is not None:
            binds.append(bind_address(self.global_frontend.bind, self.host))
        _unique(binds, "frontends and global", "bind")
        if not binds:
            raise ValueError("frontends: give at least one frontend (or a `global` one).")
        served = {c.datacenter for c in self.clusters}
        for key_id, datacenters in self.residency.keys.items():
            unknown = sorted(set(datacenters) - served)
            if unknown:
                raise ValueError(
                    f"residency.keys.{key_id}: {', '.join(unknown)} has no cluster here "
                    f"(datacenters with clusters: {', '.join(sorted(served))})."
                )
        _ = self.topology  # rtt_ms names only datacenters of the spec, none negative
        return self

    @property
    def datacenters(self) -> tuple[str, ...]:
        """Datacenters with clusters, in the order the spec names them."""
        return tuple(dict.fromkeys(c.datacenter for c in self.clusters))

    @property
    def topology(self) -> Topology:
        every = [*self.datacenters, *(f.datacenter for f in self.frontends)]
        return Topology.of(every, self.rtt_ms)

    def cluster(self, name: str) -> ClusterSpec:
        for c in self.clusters:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.clusters)
        raise ClusterError(f"No cluster {name!r} behind the edge (it has {known}).")

    def in_datacenter(self, datacenter: str) -> list[ClusterSpec]:
        return [c for c in self.clusters if c.datacenter == datacenter]

    def failover_order(self, origin: str) -> list[str]:
        """Datacenters with clusters, nearest to ``origin`` first."""
        return self.topology.nearest_first(origin, self.datacenters)


def _unique(values: list[str], where: str, field: str) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{where}: {field} {value!r} appears twice; each must be unique.")
        seen.add(value)


def bind_address(bind: str, host: str) -> str:
    """``ADDRESS:PORT`` from ``PORT`` or ``ADDRESS:PORT``; ValueError naming the fix."""
    address, _, port = bind.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"bind {bind!r}: give PORT or ADDRESS:PORT (port 1-65535).")
    return f"{address or host}:{int(port)}"


def load_spec(path: Path) -> EdgeSpec:
    """Read and check an edge spec; ClusterError naming each bad field and its value."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ClusterError(f"Cannot read the edge spec {path}: {err}") from None
    try:
        return EdgeSpec.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ClusterError(f"{path}: {spec_errors(err)}") from None


def spec_errors(err: ValidationError) -> str:
    """pydantic's errors as ``field.path: message (got value)``, one per line."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = f" (got {e['input']!r})" if e["type"] != "missing" and e["loc"] else ""
        lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "\n".join(lines)


def residency_of(spec: EdgeSpec, *from_stores: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """The residency map's entries (key id -> datacenters): the spec's keys and those read
    from key stores; a key named in several keeps only the datacenters all of them allow
    (the strictest residency), and one they share none of is served nowhere ("none"),
    never anywhere."""
    merged: dict[str, set[str]] = {}
    for source in (*from_stores, spec.residency.keys):
        for key_id, datacenters in source.items():
            allowed = set(datacenters)
            merged[key_id] = merged[key_id] & allowed if key_id in merged else allowed
    return {k: ",".join(sorted(v)) or "none" for k, v in sorted(merged.items())}
