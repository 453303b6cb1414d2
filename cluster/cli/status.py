"""``aimass status``'s datacenter view: nodes, Serve replicas and routing per datacenter, and
where the sharding actors (ShardStore replicas, pipeline stages) run.

Replicas are placed by the Serve controller (its details name each replica's node; a node's
region label names its datacenter). Routing shares come from the gateways' own counter of
answers by origin and serving datacenter (``aimass_datacenter_answers_total``), read from
every node's metrics endpoint as Prometheus would: the targets are Ray's service-discovery
file under the cluster's temp dir.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from actors.pipeline import in_namespace
from cluster.topology import REGION_LABEL

# Ray exports a metric made with ray.util.metrics under its name with a ``ray_`` prefix.
_ANSWERS = re.compile(
    r"^(?:ray_)?aimass_datacenter_answers_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)",
    re.M,
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def region_of_nodes(nodes: list) -> dict[str, str]:
    """Node id -> datacenter, from State API node entries (``labels``)."""
    return {n.node_id: n.labels.get(REGION_LABEL, "") for n in nodes}


def replicas_by_datacenter(details: dict, regions: dict[str, str]) -> dict[str, Counter]:
    """``{deployment: Counter({datacenter: RUNNING replicas})}`` from Serve's details."""
    found: dict[str, Counter] = defaultdict(Counter)
    for app in (details.get("applications") or {}).values():
        for name, deployment in (app.get("deployments") or {}).items():
            for replica in deployment.get("replicas") or []:
                if replica.get("state") == "RUNNING":
                    found[name][regions.get(replica.get("node_id"), "?")] += 1
    return dict(found)


def answers_by_origin(texts: list[str]) -> dict[tuple[str, str], float]:
    """``{(origin, served): answers}`` summed over the metrics pages ``texts``."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for text in texts:
        for match in _ANSWERS.finditer(text):
            labels = dict(_LABEL.findall(match["labels"]))
            totals[labels.get("origin", ""), labels.get("served", "")] += float(match["value"])
    return dict(totals)


def routing_rows(answers: dict[tuple[str, str], float]) -> list[tuple[str, str, str, str]]:
    """Per origin: its answers, the share served at home, and where the rest spilled."""
    by_origin: dict[str, dict[str, float]] = defaultdict(dict)
    for (origin, served), n in answers.items():
        by_origin[origin][served] = n
    rows = []
    for origin, served in sorted(by_origin.items()):
        total = sum(served.values())
        home = served.get(origin, 0.0)
        spilled = ", ".join(
            f"{dc} {n / total:.0%}" for dc, n in sorted(served.items()) if dc != origin
        )
        rows.append((origin, f"{total:g}", f"{home / total:.1%}", spilled or "-"))
    return rows


def sharding_rows(actors: list, regions: dict[str, str], namespaces: tuple[str, ...]) -> list:
    """``(actor name, datacenter, node, state)`` for the live actors of ``namespaces`` (and of
    the owners' namespaces under them, ``<namespace>.<owner>``: a Generator replica's stage
    groups): their names say what they hold (dataset and shard replica, or model, version
    and stage)."""
    rows = [
        (a.name, regions.get(a.node_id, "") or "-", (a.node_id or "")[:8], a.state)
        for a in actors
        if any(in_namespace(a.ray_namespace or "", ns) for ns in namespaces)
        and a.name
        and a.state != "DEAD"
    ]
    return sorted(rows)
