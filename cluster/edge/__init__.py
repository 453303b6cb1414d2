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
connection.

Modules: ``spec`` (the typed spec), ``haproxy_config`` (``render``), ``process`` (the
HAProxy binary and master process), ``runtime_api`` (its unix socket), ``control`` (the
running edge: up, down, weights, drains, residency).
"""

from cluster.edge.control import (
    Started,
    down,
    runtime,
    set_state,
    set_weight,
    sync_residency,
    up,
    write_files,
)
from cluster.edge.haproxy_config import ALL_CLUSTERS, Rendered, backend_of, render
from cluster.edge.process import ProcessFiles, check, master
from cluster.edge.runtime_api import AdminState, RuntimeApi, ServerRow
from cluster.edge.spec import (
    KEY_PATTERN,
    ORIGIN_HEADER,
    REQUEST_ID_PATTERN,
    ClusterSpec,
    EdgeSpec,
    FrontendSpec,
    bind_address,
    load_spec,
    residency_of,
    spec_errors,
)

__all__ = [
    "ALL_CLUSTERS",
    "KEY_PATTERN",
    "ORIGIN_HEADER",
    "REQUEST_ID_PATTERN",
    "AdminState",
    "ClusterSpec",
    "EdgeSpec",
    "FrontendSpec",
    "ProcessFiles",
    "Rendered",
    "RuntimeApi",
    "ServerRow",
    "Started",
    "backend_of",
    "bind_address",
    "check",
    "down",
    "load_spec",
    "master",
    "render",
    "residency_of",
    "runtime",
    "set_state",
    "set_weight",
    "spec_errors",
    "sync_residency",
    "up",
    "write_files",
]
