"""``aimass``: operate the embedded cluster and its API keys.

aimass up [--datacenters A,B]   start the local Ray head (token auth, 127.0.0.1, datacenter
                 labels), and one node per datacenter
aimass datacenter stop|start NAME   lose a datacenter's node, or bring it back
aimass status    nodes with labels and resources, jobs, Serve applications
aimass down      stop what `up` started (its Prometheus included)
aimass alerts    the alerts pending or firing in the cluster's Prometheus
aimass deploy [CONFIG]   check a Serve config against the datacenters, serve deploy, wait
aimass keys create NAME [--scope predict|admin]... [--rate R [--burst B]]
                 [--datacenter DC]... [--home DC] [--tenant T] | list | revoke ID
aimass models list | show NAME[@ALIAS|@VERSION] | promote NAME VERSION | rollback NAME
              | diff REF_A REF_B | history NAME       (promote/rollback/history: --alias)
aimass release status [MODEL] | abort MODEL [--reason WHY]
aimass edge check|up|residency --config EDGE.yaml | status | weight CLUSTER W
            | drain CLUSTER | ready CLUSTER | down      (HAProxy across clusters)
aimass rollout --model M [--candidate V] --cluster REGION=DASHBOARD_URL... [--token R=FILE]
               a candidate one datacenter's cluster at a time (shared registry)

This module holds the cluster's own commands (up, down, status, deploy) and assembles the
rest: each group (datacenter, keys, models, release, edge, rollout) is a module of
``cluster.cli`` with its handlers and its ``add_parser``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from cluster import local
from cluster.cli import datacenter, edge, keys, models, release, rollout
from cluster.cli.console import make_console
from cluster.exceptions import ClusterError
from cluster.monitoring import prometheus
from cluster.settings import Settings, get_settings
from models.exceptions import ModelError

console = make_console()


def cmd_up(settings: Settings, args: argparse.Namespace) -> None:
    info = local.up(settings)
    if args.datacenters:
        datacenter.up_datacenters(settings, args.datacenters.split(","), args.datacenter_cpus)
    verb = "Started" if info.started else "Already running:"
    console.print(f"{verb} Ray head at [bold]{info.gcs_address}[/] (token auth on)")
    console.print(f"  dashboard  {info.dashboard_url}  (token in {info.token_path})")
    if info.prometheus_url:
        console.print(
            f"  metrics    {info.prometheus_url}  (Prometheus: alerts with `aimass alerts`)"
        )
    elif settings.prometheus == "auto":
        console.print(f"  metrics    off. {prometheus.INSTALL_HINT}", highlight=False)
    console.print(
        f"  submit     ray job submit --address {info.dashboard_url} --working-dir . -- "
        "python -m jobs.train --config digits_cnn"
    )
    # Ray's CLIs send the token only in token mode; `make install` has the venv's activation
    # set it.
    activate = Path(sys.prefix) / "bin" / "activate"
    sets_it = activate.is_file() and "RAY_AUTH_MODE=token" in activate.read_text()
    console.print(
        "             (its shell needs RAY_AUTH_MODE=token"
        + (f": `source {activate}` sets it)" if sets_it else ")"),
        highlight=False,
    )


def cmd_down(settings: Settings, _: argparse.Namespace) -> None:
    count = local.down(settings)
    console.print(
        f"Stopped {count} processes of the cluster at {settings.gcs_address}."
        if count
        else f"No cluster running at {settings.gcs_address}."
    )


def cmd_alerts(settings: Settings, _: argparse.Namespace) -> None:
    if not prometheus.is_ready(settings):
        console.print(
            f"No Prometheus answers at {prometheus.url(settings)}. "
            + ("Start it with the cluster: aimass up" if prometheus.binary() else "")
            + ("" if prometheus.binary() else prometheus.INSTALL_HINT),
            highlight=False,
        )
        sys.exit(1)
    found = prometheus.firing(settings)
    table = Table("alert", "state", "severity", "labels", "since", "summary", title="Alerts")
    for alert in sorted(found, key=lambda a: (a["state"], a["labels"]["alertname"])):
        labels = {k: v for k, v in alert["labels"].items() if k not in ("alertname", "severity")}
        table.add_row(
            alert["labels"]["alertname"],
            alert["state"],
            alert["labels"].get("severity", ""),
            ", ".join(f"{k}={v}" for k, v in sorted(labels.items())),
            alert.get("activeAt", "")[:19],
            alert.get("annotations", {}).get("summary", ""),
        )
    console.print(table if found else f"No alert pending or firing ({prometheus.url(settings)}).")


def cmd_status(settings: Settings, _: argparse.Namespace) -> None:
    if not local.is_running(settings):
        console.print(f"No cluster answers at {settings.dashboard_url}. Start one: aimass up")
        sys.exit(1)
    local.connect_clients(settings)
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    nodes = Table("node", "state", "labels", "resources", title="Nodes")
    found = list_nodes(address=settings.dashboard_url, detail=True)
    for node in found:
        labels = "\n".join(f"{k}={v}" for k, v in sorted(node.labels.items()) if "node-id" not in k)
        res = "\n".join(
            _resource(k, v)
            for k, v in sorted(node.resources_total.items())
            if not k.startswith("node:")
        )
        nodes.add_row(node.node_id[:8], node.state, labels, res)
    console.print(nodes)
    jobs = Table("job", "status", "entrypoint", title="Jobs")
    for job in JobSubmissionClient(settings.dashboard_url).list_jobs()[-10:]:
        jobs.add_row(job.submission_id or job.job_id or "", str(job.status), job.entrypoint)
    console.print(jobs)
    details = _print_serve(settings)
    _print_datacenters(settings, found, details)
    _print_sharding(settings, found)


def _print_datacenters(settings: Settings, nodes: list, details: dict) -> None:
    """Replicas per datacenter and deployment; answers by origin, and where they spilled."""
    from cluster.cli import status

    replicas = status.replicas_by_datacenter(details, status.region_of_nodes(nodes))
    placed = Table("deployment", "replicas per datacenter", title="Replicas by datacenter")
    for name, counts in sorted(replicas.items()):
        placed.add_row(name, ", ".join(f"{dc or '-'}={n}" for dc, n in sorted(counts.items())))
    console.print(placed)
    pages = prometheus.scrape(prometheus.node_targets(settings.ray_temp_dir))
    rows = status.routing_rows(status.answers_by_origin(pages))
    if rows:
        routing = Table(
            "origin", "answers", "served at origin", "spilled to", title="Routing by datacenter"
        )
        for row in rows:
            routing.add_row(*row)
        console.print(routing)


def _print_sharding(settings: Settings, nodes: list) -> None:
    """Where ShardStore replicas and pipeline stages run (their names say what they hold)."""
    from ray.util.state import list_actors

    from actors.pipeline import DEFAULT_NAMESPACE as STAGES
    from actors.shard_store import NAMESPACE as SHARDS
    from cluster.cli import status

    found = list_actors(address=settings.dashboard_url, detail=True, limit=10_000)
    rows = status.sharding_rows(found, status.region_of_nodes(nodes), (SHARDS, STAGES))
    if rows:
        table = Table("actor", "datacenter", "node", "state", title="Sharding actors")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _resource(name: str, amount: float) -> str:
    return f"{name}={amount / 2**30:.1f} GiB" if "memory" in name else f"{name}={amount:g}"


def _print_serve(settings: Settings) -> dict:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient  # the `serve` CLI's client

    details = ServeSubmissionClient(settings.dashboard_url).get_serve_details()
    apps = Table("application", "status", "route", "deployments", title="Serve")
    for name, app in (details.get("applications") or {}).items():
        deployments = ", ".join(
            f"{d}={info['status']}({len(info.get('replicas', []))})"
            for d, info in app.get("deployments", {}).items()
        )
        apps.add_row(name, app["status"], str(app.get("route_prefix")), deployments)
    console.print(apps)
    return details


def cmd_deploy(settings: Settings, args: argparse.Namespace) -> None:
    from cluster.cli.deploy import SERVE_CONFIG, checked_deploy

    source = Path(args.config) if args.config else SERVE_CONFIG
    local.connect_clients(settings)
    statuses = checked_deploy(settings, source)
    apps = ", ".join(f"{name} {status}" for name, status in statuses.items())
    console.print(f"Deployed {source}: {apps} (HTTP on {settings.serve_url})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aimass", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local Ray head (and datacenter nodes)")
    up.add_argument(
        "--datacenters",
        metavar="A,B[,C]",
        help="also one Ray node per datacenter, labelled with its region (e.g. us-east,eu-west)",
    )
    up.add_argument("--datacenter-cpus", type=int, default=2, help="CPUs of each such node")
    up.set_defaults(run=cmd_up)
    sub.add_parser("down", help="stop the local Ray head").set_defaults(run=cmd_down)
    sub.add_parser("status", help="nodes, jobs, Serve apps").set_defaults(run=cmd_status)
    sub.add_parser(
        "alerts", help="the alerts the cluster's Prometheus holds (pending, firing)"
    ).set_defaults(run=cmd_alerts)
    deploy = sub.add_parser(
        "deploy", help="check a Serve config against the datacenters, then serve deploy it"
    )
    deploy.add_argument("config", nargs="?", help="default: serve_apps/serve_config.yaml")
    deploy.set_defaults(run=cmd_deploy)
    for group in (datacenter, keys, models, release, edge, rollout):
        group.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "keys" and args.action != "list" and not args.name:
        parser().error(
            f"`aimass keys {args.action}` needs a {'name' if args.action == 'create' else 'key id'}"
        )
    try:
        args.run(get_settings(), args)
    except (ClusterError, ModelError, KeyError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        sys.exit(1)


if __name__ == "__main__":
    main()
