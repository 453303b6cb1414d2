"""``aimass``: operate the embedded cluster and its API keys.

aimass up        start the local Ray head (token auth, 127.0.0.1, datacenter labels)
aimass status    nodes with labels and resources, jobs, Serve applications
aimass down      stop what `up` started
aimass keys create NAME [--scope predict|admin]... | list | revoke ID
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from cluster import local
from cluster.exceptions import ClusterError
from cluster.settings import Settings, get_settings

console = Console()


def cmd_up(settings: Settings, _: argparse.Namespace) -> None:
    info = local.up(settings)
    verb = "Started" if info.started else "Already running:"
    console.print(f"{verb} Ray head at [bold]{info.gcs_address}[/] (token auth on)")
    console.print(f"  dashboard  {info.dashboard_url}  (token in {info.token_path})")
    console.print(
        f"  submit     ray job submit --address {info.dashboard_url} --working-dir . -- "
        "python -m jobs.train --config digits_cnn"
    )


def cmd_down(settings: Settings, _: argparse.Namespace) -> None:
    count = local.down(settings)
    console.print(
        f"Stopped {count} processes of the cluster at {settings.gcs_address}."
        if count
        else f"No cluster running at {settings.gcs_address}."
    )


def cmd_status(settings: Settings, _: argparse.Namespace) -> None:
    if not local.is_running(settings):
        console.print(f"No cluster answers at {settings.dashboard_url}. Start one: aimass up")
        sys.exit(1)
    local.connect_clients(settings)
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    nodes = Table("node", "state", "labels", "resources", title="Nodes")
    for node in list_nodes(address=settings.dashboard_url, detail=True):
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
    _print_serve(settings)


def _resource(name: str, amount: float) -> str:
    return f"{name}={amount / 2**30:.1f} GiB" if "memory" in name else f"{name}={amount:g}"


def _print_serve(settings: Settings) -> None:
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


def cmd_keys(settings: Settings, args: argparse.Namespace) -> None:
    from serve_apps.keys import KeyStore, keys_uri

    store = KeyStore(keys_uri(settings.storage_root))
    if args.action == "create":
        key, record = store.create(args.name, tuple(args.scope or ["predict"]))
        console.print(
            f"Created key [bold]{record.id}[/] ({', '.join(record.scopes)}). "
            "It is shown once; store it now:"
        )
        print(key)
    elif args.action == "revoke":
        record = store.revoke(args.name)
        console.print(f"Revoked key {record.id} ({record.name}) at {record.revoked}.")
    else:
        table = Table("id", "name", "scopes", "created", "revoked", title="API keys")
        for r in store.records().values():
            table.add_row(r.id, r.name, ",".join(r.scopes), r.created, r.revoked or "")
        console.print(table)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aimass", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local Ray head").set_defaults(run=cmd_up)
    sub.add_parser("down", help="stop the local Ray head").set_defaults(run=cmd_down)
    sub.add_parser("status", help="nodes, jobs, Serve apps").set_defaults(run=cmd_status)
    keys = sub.add_parser("keys", help="manage gateway API keys")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("name", nargs="?", help="key name (create) or key id (revoke)")
    keys.add_argument("--scope", action="append", choices=["predict", "admin"])
    keys.set_defaults(run=cmd_keys)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "keys" and args.action != "list" and not args.name:
        parser().error(
            f"`aimass keys {args.action}` needs a {'name' if args.action == 'create' else 'key id'}"
        )
    try:
        args.run(get_settings(), args)
    except (ClusterError, KeyError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        sys.exit(1)


if __name__ == "__main__":
    main()
