"""The edge across clusters: HAProxy in front of several Ray clusters' model APIs, one
cluster per datacenter (a Ray cluster is never stretched over a WAN).

An edge spec (YAML, ``EdgeSpec``) names the clusters (datacenter, model-API URL, weight) and
the entry points: one frontend per region (e.g. one loopback address:port each) and an
optional global one. ``render`` turns it into HAProxy's configuration, a pure function:

- A region's frontend sets ``X-Origin-Datacenter`` to its region (any client value is
  overwritten) and serves from that region's clusters first, the other datacenters after,
  nearest first by ``cluster.topology``. Priority failover: a datacenter serves while at
  least ``failover.healthy_share`` of its clusters are up (HAProxy's ``nbsrv``); below that
  the next one that meets the share takes over; when none does, the first with any cluster
  up. The global frontend splits by weight over every cluster (and removes the header).
- Health: every cluster is checked on ``GET /healthz`` and then ``GET /readyz[?model=M]``
  (ready once the model is served and its Predictor replicas run), one check per cluster,
  which the global backend's servers track. Outliers: ``outliers.consecutive_5xx`` failed
  answers in a row (5xx or no answer; HAProxy's ``observe layer7``) take a cluster out at
  once (``on-error mark-down``); the health checks bring it back.
- Residency by API key: the key id is read as the gateway reads it (``X-API-Key``, else
  ``Authorization: Bearer amk_<id>_...``) and looked up in a map file (key id -> its
  datacenters). A restricted key's requests only ever go to its datacenters' clusters; when
  none of them is up the edge answers 503 with ``Retry-After`` itself. The edge forwards
  only the key it classified (as ``X-API-Key``; other key headers are dropped), so the
  gateway authenticates exactly that key.
- The edge's own answers (503 no cluster, 504 timeout, 502, 400, 408) use the gateway's
  JSON error shape ``{"error", "detail", "request_id"}``; every answer carries
  ``X-Request-ID`` (the client's when safe to echo, by the gateway's rule, else the edge's).
- Binds ``host`` (127.0.0.1) unless a frontend names another address. The runtime API is a
  unix socket of mode 0600 in a 0700 folder; no stats page is served on any interface.

Runtime changes go through HAProxy's runtime API with no reload (``set_weight``,
``set_state``, ``sync_residency``); ``up`` on a running edge reloads it without dropping a
connection (``cluster.haproxy``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
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

from cluster import haproxy
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


# ---- the configuration HAProxy runs -----------------------------------------------------


def residency_map(files: haproxy.ProcessFiles) -> Path:
    """The map file: one ``<key id> <datacenter>[,<datacenter>...]`` per line."""
    return files.folder / "residency.map"


def residency_of(spec: EdgeSpec, *from_stores: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """The map's entries: the spec's keys and those read from key stores; a key named in
    several keeps only the datacenters all of them allow (the strictest residency), and
    one they share none of is served nowhere ("none"), never anywhere."""
    merged: dict[str, set[str]] = {}
    for source in (*from_stores, spec.residency.keys):
        for key_id, datacenters in source.items():
            allowed = set(datacenters)
            merged[key_id] = merged[key_id] & allowed if key_id in merged else allowed
    return {k: ",".join(sorted(v)) or "none" for k, v in sorted(merged.items())}


def backend_of(datacenter: str) -> str:
    """The backend of a datacenter's clusters (one health check per cluster lives there)."""
    return f"dc_{datacenter}"


ALL_CLUSTERS = "all_clusters"
"""The global frontend's backend: every cluster, by weight (its servers track the checks)."""


def _seconds(value: float) -> str:
    return f"{max(1, round(value * 1000))}ms"


def _error(status: int, code: str, detail: str, retry: bool = False) -> str:
    """An ``http-error`` answer in the gateway's shape (``%[...]``: filled per request)."""
    body = json.dumps(
        {"error": code, "detail": detail, "request_id": "%[var(txn.rid)]"}, separators=(",", ":")
    )
    after = " hdr Retry-After 1" if retry else ""
    return f"    http-error status {status} content-type application/json{after} lf-string '{body}'"


def _global(spec: EdgeSpec, files: haproxy.ProcessFiles) -> list[str]:
    return [
        "global",
        f"    maxconn {spec.max_connections}",
        "    # The only way in besides the frontends: a unix socket, 0600, in a 0700 folder.",
        "    # No `stats uri` and no stats listener anywhere: stats are read through it.",
        f"    stats socket {files.socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        # Weights and states set at runtime survive a reload (saved just before it).
        f"    server-state-file {files.server_state}",
        "    log stdout format raw local0 info",
        "",
    ]


def _defaults(spec: EdgeSpec) -> list[str]:
    t = spec.timeouts
    return [
        "defaults",
        "    mode http",
        "    log global",
        '    log-format "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %tsc'
        ' rid=%[var(txn.rid)] key=%[var(txn.key_id)] dc=%[var(txn.dc)]"',
        "    option forwardfor",
        f"    timeout connect {_seconds(t.connect_s)}",
        f"    timeout client {_seconds(t.client_s)}",
        f"    timeout server {_seconds(t.server_s)}",
        f"    timeout http-request {_seconds(t.http_request_s)}",
        f"    timeout queue {_seconds(t.queue_s)}",
        f"    timeout check {_seconds(spec.health.timeout_s)}",
        "    timeout http-keep-alive 10s",
        "    load-server-state-from-file global",
        "    # The edge's own answers, in the gateway's error shape.",
        _error(400, "bad_request", "The edge could not read this request.", False),
        _error(408, "request_timeout", "The request did not arrive in time.", False),
        _error(500, "edge_error", "The edge failed on this request.", False),
        _error(502, "bad_gateway", "The cluster gave no valid answer.", True),
        _error(503, "no_cluster", "No cluster can answer now.", True),
        _error(504, "upstream_timeout", "The cluster did not answer in time.", True),
        "",
    ]


def _request_rules(residency: Path) -> list[str]:
    """Request id, the API key as the gateway reads it, and its residency."""
    return [
        "    # One request id end to end: the client's when safe to echo (the gateway's rule).",
        "    unique-id-format %{+X}o%ci%cp%fi%fp%Ts%rt%pid",
        "    http-request set-var(txn.rid) req.fhdr(x-request-id,1)"
        f" if {{ req.fhdr(x-request-id,1) -m reg {REQUEST_ID_PATTERN} }}",
        "    http-request set-var(txn.rid) unique-id unless { var(txn.rid) -m found }",
        "    http-request set-header X-Request-ID %[var(txn.rid)]",
        "    http-after-response set-header X-Request-ID %[var(txn.rid)]",
        "    # The key the gateway would take: X-API-Key when not empty, else Authorization",
        "    # (Bearer or bare). Only a well-formed key goes on, as the one X-API-Key: the",
        "    # gateway then authenticates exactly the key whose residency was looked up here.",
        "    http-request set-var(txn.presented)"
        " req.fhdr(authorization,1),regsub('^[Bb][Ee][Aa][Rr][Ee][Rr] +','')",
        "    http-request set-var(txn.presented) req.fhdr(x-api-key,1)"
        " if { req.fhdr(x-api-key,1) -m len gt 0 }",
        "    http-request set-var(txn.key) var(txn.presented)"
        f" if {{ var(txn.presented) -m reg {KEY_PATTERN} }}",
        "    http-request del-header Authorization",
        "    http-request del-header X-API-Key",
        "    http-request set-header X-API-Key %[var(txn.key)] if { var(txn.key) -m found }",
        "    http-request set-var(txn.key_id) var(txn.key),bytes(4,12)"
        " if { var(txn.key) -m found }",
        f"    http-request set-var(txn.allowed) var(txn.key_id),map({residency})"
        " if { var(txn.key_id) -m found }",
        "    acl restricted var(txn.allowed) -m found",
        "    acl chosen var(txn.dc) -m found",
    ]


def _choices(spec: EdgeSpec, order: list[str], restricted: bool) -> list[str]:
    """``set-var(txn.dc)`` rules over ``order``: the first datacenter with its healthy share
    of clusters up, else the first with any up (HAProxy's nbsrv: drained, weight-0 and down
    servers do not count). For restricted keys, only the datacenters their map entry names."""
    lines, seen = [], set()
    for strict in (True, False):
        for dc in order:
            size = len(spec.in_datacenter(dc))
            need = max(1, math.ceil(spec.failover.healthy_share * size)) if strict else 1
            if (dc, need) in seen:
                continue
            seen.add((dc, need))
            who = (
                f"restricted {{ var(txn.allowed) -m reg (^|,){dc}(,|$) }}"
                if restricted
                else ("!restricted")
            )
            lines.append(
                f"    http-request set-var(txn.dc) str({dc}) if {who}"
                f" {{ nbsrv({backend_of(dc)}) ge {need} }} !chosen"
            )
    return lines


_REFUSED = (
    "    http-request return status 503 content-type application/json hdr Retry-After 1"
    ' lf-string \'{"error":"no_cluster","detail":"key %[var(txn.key_id)] is restricted to'
    ' %[var(txn.allowed)], and no cluster there can answer now.","request_id":'
    '"%[var(txn.rid)]"}\' if restricted !chosen'
)


def _region_frontend(spec: EdgeSpec, frontend: FrontendSpec, residency: Path) -> list[str]:
    origin, order = frontend.datacenter, spec.failover_order(frontend.datacenter)
    return [
        f"frontend region_{origin}",
        f"    bind {bind_address(frontend.bind, spec.host)}",
        *_request_rules(residency),
        f"    # Entered in {origin}: the gateways are told so, whatever the client said.",
        f"    http-request set-header {ORIGIN_HEADER} {origin}",
        f"    # A restricted key: its datacenters only, nearest first ({' > '.join(order)}).",
        *_choices(spec, order, restricted=True),
        _REFUSED,
        "    # Everyone else: this region first, then the next that has its healthy share up.",
        *_choices(spec, order, restricted=False),
        f"    use_backend {backend_of('%[var(txn.dc)]')} if chosen",
        "",
    ]


def _global_frontend(spec: EdgeSpec, bind: str, residency: Path) -> list[str]:
    order = list(spec.datacenters)
    return [
        "frontend global",
        f"    bind {bind_address(bind, spec.host)}",
        *_request_rules(residency),
        "    # No region: the gateways use the key's home, else their own region.",
        f"    http-request del-header {ORIGIN_HEADER}",
        f"    # A restricted key: its datacenters only, in the spec's order ({' > '.join(order)}).",
        *_choices(spec, order, restricted=True),
        _REFUSED,
        f"    use_backend {backend_of('%[var(txn.dc)]')} if chosen",
        f"    default_backend {ALL_CLUSTERS}",
        "",
    ]


def _server(spec: EdgeSpec, c: ClusterSpec, track: str | None = None) -> str:
    host = urlsplit(c.url).hostname
    tls = f" ssl verify required ca-file {spec.ca_file} sni str({host}) check-sni {host}"
    how = f"track {track}" if track else "check"
    return f"    server {c.name} {c.address} {how} weight {c.weight}{tls if c.tls else ''}"


def _dc_backend(spec: EdgeSpec, datacenter: str) -> list[str]:
    h, o = spec.health, spec.outliers
    ready = f"/readyz?model={h.ready_model}" if h.ready_model else "/readyz"
    slow = f" slowstart {_seconds(spec.slowstart_s)}" if spec.slowstart_s else ""
    return [
        f"backend {backend_of(datacenter)}",
        "    balance roundrobin",
        "    # Alive (/healthz), then ready: the model served and its replicas running.",
        "    option httpchk",
        "    http-check connect",
        "    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host aimass-edge",
        "    http-check expect status 200",
        "    http-check connect",
        f"    http-check send meth GET uri {ready} ver HTTP/1.1 hdr Host aimass-edge",
        "    http-check expect status 200",
        "    # A request that never reached a cluster is tried again (another one if any).",
        "    retries 2",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        f"    # {o.consecutive_5xx} failed answers in a row eject a cluster ({o.on_error}).",
        f"    default-server inter {_seconds(h.interval_s)} fall {h.fall} rise {h.rise}"
        f" observe layer7 error-limit {o.consecutive_5xx} on-error {o.on_error}{slow}",
        "    # A name that does not resolve at start leaves that cluster out, not the edge.",
        "    default-server init-addr last,libc,none",
        *(_server(spec, c) for c in spec.in_datacenter(datacenter)),
        "",
    ]


def _all_backend(spec: EdgeSpec) -> list[str]:
    return [
        f"backend {ALL_CLUSTERS}",
        "    balance roundrobin",
        "    retries 2",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        "    default-server init-addr last,libc,none",
        "    # Each server follows its datacenter backend's check (and its drain/maint); its",
        "    # answers eject nothing: observe needs a server's own checks (the region",
        "    # frontends' answers and the checks do).",
        *(_server(spec, c, track=f"{backend_of(c.datacenter)}/{c.name}") for c in spec.clusters),
        "",
    ]


@dataclass(frozen=True, slots=True)
class Rendered:
    """What ``render`` produced: HAProxy's configuration and the residency map's text."""

    config: str
    residency: str


def render(
    spec: EdgeSpec, files: haproxy.ProcessFiles, residency: dict[str, str] | None = None
) -> Rendered:
    """HAProxy's configuration for ``spec``, its files under ``files``; ``residency`` is
    the key id -> datacenters map (``residency_of``)."""
    map_file = residency_map(files)
    lines = [
        "# Generated by aimass from an edge spec (cluster/edge.py): edit the spec, not this.",
        *_global(spec, files),
        *_defaults(spec),
    ]
    for frontend in spec.frontends:
        lines += _region_frontend(spec, frontend, map_file)
    if spec.global_frontend is not None:
        lines += _global_frontend(spec, spec.global_frontend.bind, map_file)
    for dc in spec.datacenters:
        lines += _dc_backend(spec, dc)
    if spec.global_frontend is not None:
        lines += _all_backend(spec)
    entries = (residency if residency is not None else residency_of(spec, {})).items()
    return Rendered("\n".join(lines), "".join(f"{k} {v}\n" for k, v in entries))


# ---- the running edge ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """What ``up`` did: ``started`` a new HAProxy, or ``reloaded`` the running one."""

    pid: int
    reloaded: bool
    files: haproxy.ProcessFiles


def _write_private(path: Path, text: str) -> None:
    """Write through a 0600 temp file renamed into place: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)
    tmp.write_text(text)
    tmp.replace(path)


def write_files(files: haproxy.ProcessFiles, rendered: Rendered) -> None:
    files.folder.mkdir(parents=True, exist_ok=True)
    files.folder.chmod(0o700)
    _write_private(residency_map(files), rendered.residency)
    _write_private(files.config, rendered.config)


def up(spec: EdgeSpec, folder: Path, residency: dict[str, str] | None = None) -> Started:
    """Start the edge of ``spec`` with its files in ``folder``, or reload the running one
    with the new spec (no connection dropped; weights and states set at runtime kept).

    The configuration is checked by ``haproxy -c`` in a staging folder first: a bad one
    never replaces the running one.
    """
    files, staging = haproxy.ProcessFiles(folder), haproxy.ProcessFiles(folder / "staging")
    write_files(staging, render(spec, staging, residency))
    haproxy.check(staging.config)
    write_files(files, render(spec, files, residency))
    if haproxy.master(files) is not None:
        haproxy.reload(files)
        return Started(haproxy.master(files).pid, reloaded=True, files=files)
    return Started(haproxy.start(files), reloaded=False, files=files)


def down(folder: Path) -> bool:
    """Stop the edge whose files are in ``folder`` (its connections finish first)."""
    return haproxy.stop(haproxy.ProcessFiles(folder))


def runtime(folder: Path) -> haproxy.RuntimeApi:
    """The runtime API of the edge in ``folder``; ClusterError when none runs there."""
    files = haproxy.ProcessFiles(folder)
    if haproxy.master(files) is None:
        raise ClusterError(f"No edge runs from {folder}: start one with `aimass edge up`.")
    return haproxy.RuntimeApi(files.socket)


def _servers_of(api: haproxy.RuntimeApi, cluster: str) -> list[haproxy.ServerRow]:
    """The cluster's server in each backend it is in (its datacenter's, the global one)."""
    rows = api.servers()
    mine = [r for r in rows if r.server == cluster]
    if not mine:
        known = ", ".join(sorted({r.server for r in rows})) or "none"
        raise ClusterError(f"No cluster {cluster!r} behind this edge (it has {known}).")
    return mine


def set_weight(folder: Path, cluster: str, weight: int) -> list[haproxy.ServerRow]:
    """Give ``cluster`` ``weight`` in every split it is part of, at once, no reload. Weight
    0 takes it out of its datacenter's share count too (as a drain does)."""
    api = runtime(folder)
    for row in _servers_of(api, cluster):
        api.set_weight(row.backend, row.server, weight)
    return _servers_of(api, cluster)


def set_state(folder: Path, cluster: str, state: haproxy.AdminState) -> list[haproxy.ServerRow]:
    """Drain ``cluster`` (no new requests; those in flight finish), or make it ready again."""
    api = runtime(folder)
    for row in _servers_of(api, cluster):
        api.set_state(row.backend, row.server, state)
    return _servers_of(api, cluster)


def sync_residency(folder: Path, residency: dict[str, str]) -> dict[str, list[str]]:
    """Make the running edge's residency map ``residency`` (no reload) and write it to the
    map file (a reload or restart keeps it). Returns the key ids added, changed, removed."""
    api, path = runtime(folder), residency_map(haproxy.ProcessFiles(folder))
    now = api.map_entries(path)
    changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    for key_id, datacenters in residency.items():
        if now.get(key_id) != datacenters:
            api.map_set(path, key_id, datacenters)
            changes["changed" if key_id in now else "added"].append(key_id)
    for key_id in sorted(set(now) - set(residency)):
        api.map_delete(path, key_id)
        changes["removed"].append(key_id)
    _write_private(path, "".join(f"{k} {v}\n" for k, v in residency.items()))
    return changes
