"""HAProxy's configuration for an edge spec, a pure function (``render``): one frontend
per region and an optional global one, one backend per datacenter (its clusters' health
checks live there), and the residency map's text.

The rules it writes are described in the package's docstring; the generated file carries
the same comments.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cluster.edge.process import ProcessFiles
from cluster.edge.spec import (
    KEY_PATTERN,
    ORIGIN_HEADER,
    REQUEST_ID_PATTERN,
    ClusterSpec,
    EdgeSpec,
    FrontendSpec,
    bind_address,
    residency_of,
)


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


def _global(spec: EdgeSpec, files: ProcessFiles) -> list[str]:
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
    spec: EdgeSpec, files: ProcessFiles, residency: dict[str, str] | None = None
) -> Rendered:
    """HAProxy's configuration for ``spec``, its files under ``files``; ``residency`` is
    the key id -> datacenters map (``residency_of``)."""
    map_file = files.residency_map
    lines = [
        "# Generated by aimass from an edge spec (cluster/edge/): edit the spec, not this.",
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
