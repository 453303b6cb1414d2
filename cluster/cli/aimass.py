"""``aimass``: operate the embedded cluster and its API keys.

aimass up [--datacenters A,B]   start the local Ray head (token auth, 127.0.0.1, datacenter
                 labels), and one node per datacenter
aimass datacenter stop|start NAME   lose a datacenter's node, or bring it back
aimass status    nodes with labels and resources, jobs, Serve applications
aimass down      stop what `up` started
aimass deploy [CONFIG]   check a Serve config against the datacenters, serve deploy, wait
aimass keys create NAME [--scope predict|admin]... [--rate R [--burst B]]
                 [--datacenter DC]... [--home DC] [--tenant T] | list | revoke ID
aimass models list | show NAME[@ALIAS|@VERSION] | promote NAME VERSION | rollback NAME
              | diff REF_A REF_B | history NAME       (promote/rollback/history: --alias)
aimass release status [MODEL] | abort MODEL [--reason WHY]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from cluster import local
from cluster.cli.console import make_console
from cluster.exceptions import ClusterError
from cluster.settings import Settings, get_settings
from models.exceptions import ModelError

if TYPE_CHECKING:  # the registry pulls in MLflow: only `aimass models` pays for that import
    from models.alias_events import AliasEvent
    from models.registry import Registry
    from serve_apps.keys import KeyRecord

console = make_console()


def cmd_up(settings: Settings, args: argparse.Namespace) -> None:
    info = local.up(settings)
    if args.datacenters:
        _up_datacenters(settings, args.datacenters.split(","), args.datacenter_cpus)
    verb = "Started" if info.started else "Already running:"
    console.print(f"{verb} Ray head at [bold]{info.gcs_address}[/] (token auth on)")
    console.print(f"  dashboard  {info.dashboard_url}  (token in {info.token_path})")
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


def _up_datacenters(settings: Settings, names: list[str], cpus: int) -> None:
    from cluster import local_datacenters

    local.connect_clients(settings)
    started = local_datacenters.start(settings, names, cpus)
    nodes = local_datacenters.running(settings)
    for name in names:
        how = "started" if name in started else "running"
        console.print(f"  datacenter {name:<12} node {nodes[name]}  ({how}, {cpus} CPUs)")


def cmd_datacenter(settings: Settings, args: argparse.Namespace) -> None:
    """Lose a datacenter's node (``stop``) or bring it back (``start``): a failover drill."""
    from cluster import local_datacenters

    local.connect_clients(settings)
    if args.action == "stop":
        count = local_datacenters.stop(settings, args.name)
        console.print(f"Stopped datacenter {args.name} ({count} processes).")
    else:
        names, _ = local_datacenters.layout(settings)
        if args.name not in names:
            raise ClusterError(
                f"{args.name!r} is not a datacenter of this cluster ({', '.join(names) or 'none'})."
            )
        local_datacenters.start(settings)
        node = local_datacenters.running(settings)[args.name]
        console.print(f"Datacenter {args.name} is up again: node {node}.")


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


def _print_datacenters(settings: Settings, nodes: list, details: dict) -> None:
    """Replicas per datacenter and deployment; answers by origin, and where they spilled."""
    from cluster.cli import status

    replicas = status.replicas_by_datacenter(details, status.region_of_nodes(nodes))
    placed = Table("deployment", "replicas per datacenter", title="Replicas by datacenter")
    for name, counts in sorted(replicas.items()):
        placed.add_row(name, ", ".join(f"{dc or '-'}={n}" for dc, n in sorted(counts.items())))
    console.print(placed)
    pages = status.scrape(status.metric_targets(settings.ray_temp_dir))
    rows = status.routing_rows(status.answers_by_origin(pages))
    if rows:
        routing = Table(
            "origin", "answers", "served at origin", "spilled to", title="Routing by datacenter"
        )
        for row in rows:
            routing.add_row(*row)
        console.print(routing)


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


def cmd_keys(settings: Settings, args: argparse.Namespace) -> None:
    from serve_apps.keys import KeyStore, keys_uri

    store = KeyStore(keys_uri(settings.storage_root))
    if args.action == "create":
        key, record = store.create(
            args.name,
            tuple(args.scope or ["predict"]),
            rate=args.rate,
            burst=args.burst,
            datacenters=tuple(args.datacenter) if args.datacenter else None,
            home=args.home,
            tenant=args.tenant,
        )
        console.print(
            f"Created key [bold]{record.id}[/] ({', '.join(record.scopes)}; {_quota(record)}"
            f"{_placement(record)}). It is shown once; store it now:"
        )
        print(key)
    elif args.action == "revoke":
        record = store.revoke(args.name)
        console.print(f"Revoked key {record.id} ({record.name}) at {record.revoked}.")
    else:
        table = Table(
            "id", "name", "scopes", "quota", "placement", "created", "revoked", title="API keys"
        )
        for r in store.records().values():
            table.add_row(
                r.id,
                r.name,
                ",".join(r.scopes),
                _quota(r),
                _placement(r).lstrip("; "),
                r.created,
                r.revoked or "",
            )
        console.print(table)


def _placement(record: KeyRecord) -> str:
    """``; served only in eu-west, home eu-west, tenant acme`` (empty when unrestricted)."""
    parts = [
        f"served only in {','.join(record.datacenters)}" if record.datacenters else "",
        f"home {record.home}" if record.home else "",
        f"tenant {record.tenant}" if record.tenant else "",
    ]
    text = ", ".join(p for p in parts if p)
    return f"; {text}" if text else ""


def _quota(record: KeyRecord) -> str:
    quota = record.quota
    return "no quota" if quota is None else f"{quota.rate:g}/s, burst {quota.burst}"


def cmd_models(settings: Settings, args: argparse.Namespace) -> None:
    from models.registry import Registry

    registry = Registry.from_settings(settings)
    {
        "list": _models_list,
        "show": _models_show,
        "promote": _models_promote,
        "rollback": _models_rollback,
        "diff": _models_diff,
        "history": _models_history,
    }[args.action](registry, args)


def _models_list(registry: Registry, _: argparse.Namespace) -> None:
    table = Table("model", "latest", "aliases", title="Models")
    for m in registry.list_models():
        aliases = ", ".join(f"{a}={v}" for a, v in m.aliases.items())
        table.add_row(m.name, str(m.latest_version or ""), aliases)
    console.print(table)


def _models_show(registry: Registry, args: argparse.Namespace) -> None:
    from models.refs import DATA_TAG, GIT_TAG, PARENT_TAG

    if "@" in args.ref:  # one version in full
        v = registry.resolve(args.ref)
        table = Table("field", "value", title=f"{v.name} version {v.version}")
        for field, value in [
            ("aliases", ", ".join(v.aliases)),
            ("parent", v.parent or ""),
            ("run", v.run_id or ""),
            ("source", v.source),
            *sorted((k, t) for k, t in v.tags.items() if k != PARENT_TAG),
        ]:
            table.add_row(field, value)
    else:  # the model: every version, with its aliases and lineage
        table = Table("version", "aliases", "parent", "run", "git sha", "data", title=args.ref)
        for v in registry.versions(args.ref):
            table.add_row(
                str(v.version),
                ", ".join(v.aliases),
                v.parent or "",
                (v.run_id or "")[:12],
                v.tags.get(GIT_TAG, "")[:12],
                v.tags.get(DATA_TAG, "")[:12],
            )
    console.print(table)


def _models_promote(registry: Registry, args: argparse.Namespace) -> None:
    event = registry.promote(args.name, args.version, alias=args.alias, reason=args.reason)
    _print_move(event, f"{args.name}@{args.alias} already points at version {args.version}.")


def _models_rollback(registry: Registry, args: argparse.Namespace) -> None:
    _print_move(registry.rollback(args.name, alias=args.alias, reason=args.reason), "")


def _print_move(event: AliasEvent | None, unchanged: str) -> None:
    if event is None:
        console.print(unchanged)
        return
    before = "(new)" if event.from_version is None else event.from_version
    console.print(
        f"Moved [bold]{event.model}@{event.alias}[/]: {before} -> {event.to_version}"
        + (f" ({event.reason})" if event.reason else "")
    )


def _models_diff(registry: Registry, args: argparse.Namespace) -> None:
    table = Table("", "", args.ref_a, args.ref_b, title="diff")
    from models.lineage import diff

    for section, rows in diff(registry, args.ref_a, args.ref_b).items():
        for key, (a, b) in rows.items():
            style = None if a == b else "bold"
            table.add_row(section, key, _cell(a), _cell(b), style=style)
    console.print(table)


def _cell(value: object) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _models_history(registry: Registry, args: argparse.Namespace) -> None:
    title = f"{args.name}@{args.alias}" if args.alias else args.name
    table = Table("when (UTC)", "alias", "from", "to", "who", "why", title=f"History of {title}")
    for e in registry.alias_history(args.name, args.alias):
        before = "" if e.from_version is None else str(e.from_version)
        table.add_row(e.when[:19], e.alias, before, str(e.to_version), e.who, e.reason)
    console.print(table)


def _models_parser(sub) -> None:
    models = sub.add_parser("models", help="registered models: aliases, history, lineage")
    models.set_defaults(run=cmd_models)
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="models with their latest version and aliases")
    show = actions.add_parser("show", help="a model's versions, or one version (NAME@…)")
    show.add_argument("ref", metavar="NAME[@ALIAS|@VERSION]")
    promote = actions.add_parser("promote", help="point an alias (champion) at a version")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    rollback = actions.add_parser("rollback", help="undo an alias's last move")
    rollback.add_argument("name")
    for p in (promote, rollback):
        p.add_argument("--alias", default="champion")
        p.add_argument("--reason", default="", help="why, kept in the alias history")
    diff = actions.add_parser("diff", help="two versions' metrics and lineage side by side")
    diff.add_argument("ref_a", metavar="REF_A")
    diff.add_argument("ref_b", metavar="REF_B")
    history = actions.add_parser("history", help="recorded alias moves, oldest first")
    history.add_argument("name")
    history.add_argument("--alias", help="only this alias (default: all)")


def cmd_release(settings: Settings, args: argparse.Namespace) -> None:
    """Ask the release controller, as a Ray driver with the cluster's token (what
    ``jobs.release`` is inside its job), without submitting a job."""
    if not local.is_running(settings):
        console.print(f"No cluster answers at {settings.dashboard_url}. Start one: aimass up")
        sys.exit(1)
    import ray

    from actors.release import find_controller

    local.connect_clients(settings)
    ray.init(address=settings.gcs_address, logging_level="ERROR", log_to_driver=False)
    try:
        controller = find_controller()
        if controller is None:
            raise ClusterError(
                "No release controller runs on this cluster: the model API's gateway starts "
                "it, and so does a release (python -m jobs.release --model NAME).",
                settings.gcs_address,
            )
        if args.action == "abort":
            _print_abort(_answer(controller.abort.remote(args.model, args.reason)))
        else:
            _print_releases(_answer(controller.status.remote(args.model)), args.model)
    finally:
        ray.shutdown()


def _answer(ref):
    """The controller's answer; its own error (ReleaseError, ModelError) as itself."""
    import ray

    try:
        return ray.get(ref, timeout=60)
    except ray.exceptions.RayTaskError as err:
        raise (err.cause if isinstance(err.cause, Exception) else err) from None
    except ray.exceptions.GetTimeoutError:
        raise ClusterError("The release controller did not answer within 60 s.") from None


def _print_abort(status: dict) -> None:
    console.print(
        f"Aborted release {status['id']} of [bold]{status['model']}[/]: "
        f"v{status['candidate']} rolled back, v{status['champion']} answers everyone "
        f"({status['history'][-1]['detail']})."
    )


def _print_releases(statuses: list[dict], model: str | None) -> None:
    if not statuses:
        console.print(f"No release of {model} has run." if model else "No release has run.")
        return
    table = Table("model", "release", "state", "mode", "versions", "share", "candidate", "now")
    for s in statuses:
        online = s["online"]["candidate"]
        figures = f"{online['requests']} answers" + "".join(
            f", {name} {online[key]:.3g}"
            for key, name in (("error_rate", "errors"), ("agreement", "agreement"))
            if online[key] is not None
        )
        table.add_row(
            s["model"],
            s["id"],
            s["state"],
            s["config"]["mode"],
            f"v{s['champion']} -> v{s['candidate']}",
            f"{s['share']:.0%}",
            figures,
            _now(s),
        )
    console.print(table)


def _now(status: dict) -> str:
    """A running release's next move and why (e.g. what its step still lacks); an ended
    one's last move."""
    if "next" in status:
        return f"{status['next']['action']}: {status['next']['reason']}"
    last = status["history"][-1]  # every release has one: its start
    return f"{last['action']}: {last['detail']}"


def _release_parser(sub) -> None:
    release = sub.add_parser("release", help="running releases: status, abort")
    release.set_defaults(run=cmd_release)
    actions = release.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="each model's latest release, or MODEL's")
    status.add_argument("model", nargs="?", metavar="MODEL")
    abort = actions.add_parser("abort", help="end MODEL's release: traffic back to champion")
    abort.add_argument("model", metavar="MODEL")
    abort.add_argument("--reason", default="aborted by an operator", help="kept in its history")


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
    dc = sub.add_parser("datacenter", help="stop or start one datacenter's node (drills)")
    dc.add_argument("action", choices=["stop", "start"])
    dc.add_argument("name", help="the datacenter (its region label)")
    dc.set_defaults(run=cmd_datacenter)
    sub.add_parser("down", help="stop the local Ray head").set_defaults(run=cmd_down)
    sub.add_parser("status", help="nodes, jobs, Serve apps").set_defaults(run=cmd_status)
    deploy = sub.add_parser(
        "deploy", help="check a Serve config against the datacenters, then serve deploy it"
    )
    deploy.add_argument("config", nargs="?", help="default: serve_apps/serve_config.yaml")
    deploy.set_defaults(run=cmd_deploy)
    keys = sub.add_parser("keys", help="manage gateway API keys")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("name", nargs="?", help="key name (create) or key id (revoke)")
    keys.add_argument("--scope", action="append", choices=["predict", "admin"])
    keys.add_argument("--rate", type=float, help="quota: requests per second, all replicas")
    keys.add_argument("--burst", type=int, help="quota: requests at once (default: rate)")
    keys.add_argument(
        "--datacenter",
        action="append",
        help="residency: serve this key only in these datacenters (repeat for several)",
    )
    keys.add_argument("--home", help="serve this key's requests in this datacenter first")
    keys.add_argument("--tenant", help="its tenant (the gateway's tenant residency applies)")
    keys.set_defaults(run=cmd_keys)
    _models_parser(sub)
    _release_parser(sub)
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
