"""``aimass edge``: HAProxy in front of several clusters' model APIs (cluster/edge/).

aimass edge check --config EDGE.yaml     render it and have HAProxy check it (haproxy -c)
aimass edge up --config EDGE.yaml        start the edge, or reload the running one seamlessly
aimass edge status                       every cluster: state, weight, last check, sessions
aimass edge weight CLUSTER W             its share of splits (0-256), at once, no reload
aimass edge drain CLUSTER | ready CLUSTER
aimass edge residency --config EDGE.yaml re-read the key stores' residency, no reload
aimass edge down                         soft stop: requests in flight finish

The edge's files (configuration, residency map, runtime socket, log) live in
``<AIMASS_HOME>/edge`` unless ``--state-dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.table import Table

from cluster import edge
from cluster.cli.console import make_console
from cluster.settings import Settings

console = make_console()


def _folder(settings: Settings, args: argparse.Namespace) -> Path:
    return (
        Path(args.state_dir).expanduser().absolute() if args.state_dir else settings.home / "edge"
    )


def key_store_residency(spec: edge.EdgeSpec) -> list[dict[str, tuple[str, ...]]]:
    """The residency of the restricted, unrevoked keys of each key store the spec names
    (``aimass keys create --datacenter``), one dict per store."""
    from serve_apps.keys import KeyStore, keys_uri

    found = []
    for root in spec.residency.key_stores:
        records = KeyStore(keys_uri(root)).records(max_age_s=0).values()
        found.append({r.id: r.datacenters for r in records if r.datacenters and not r.revoked})
    return found


def _residency(spec: edge.EdgeSpec) -> dict[str, str]:
    return edge.residency_of(spec, *key_store_residency(spec))


def cmd_edge(settings: Settings, args: argparse.Namespace) -> None:
    {
        "check": _check,
        "up": _up,
        "status": _status,
        "down": _down,
        "weight": _weight,
        "drain": _state,
        "ready": _state,
        "residency": _sync_residency,
    }[args.action](_folder(settings, args), args)


def _check(_: Path, args: argparse.Namespace) -> None:
    spec = edge.load_spec(Path(args.config))
    with tempfile.TemporaryDirectory(prefix="aimass-edge-check-") as tmp:
        files = edge.ProcessFiles(Path(tmp))
        edge.write_files(files, edge.render(spec, files, _residency(spec)))
        edge.check(files.config)
    console.print(f"{args.config}: valid ({_summary(spec)}).")


def _summary(spec: edge.EdgeSpec) -> str:
    entries = [f"{f.datacenter} {edge.bind_address(f.bind, spec.host)}" for f in spec.frontends]
    if spec.global_frontend is not None:
        entries.append(f"global {edge.bind_address(spec.global_frontend.bind, spec.host)}")
    return f"{len(spec.clusters)} clusters; entry points: {', '.join(entries)}"


def _up(folder: Path, args: argparse.Namespace) -> None:
    spec = edge.load_spec(Path(args.config))
    residency = _residency(spec)
    started = edge.up(spec, folder, residency)
    verb = "Reloaded (no connection dropped)" if started.reloaded else "Started"
    console.print(f"{verb} the edge, HAProxy pid {started.pid}: {_summary(spec)}.")
    for c in spec.clusters:
        console.print(f"  {c.name:<16} {c.datacenter:<14} {c.url}  weight {c.weight}")
    console.print(
        f"  residency: {len(residency)} restricted keys; runtime API {started.files.socket} "
        f"(0600); log {started.files.log}"
    )


def _status(folder: Path, _: argparse.Namespace) -> None:
    api = edge.runtime(folder)
    info = api.info()
    table = Table(
        "cluster", "split", "state", "weight", "last check", "now", "total", "5xx",
        title=f"Edge (HAProxy {info.get('Version', '?')}, pid {info.get('Pid', '?')}, "
        f"up {info.get('Uptime', '?')})",
    )  # fmt: skip
    for r in sorted(api.servers(), key=lambda r: (r.server, r.backend)):
        split = "global" if r.backend == edge.ALL_CLUSTERS else r.backend.removeprefix("dc_")
        table.add_row(
            r.server, split, r.status, str(r.weight), r.check or "(tracks)",
            str(r.sessions), str(r.total), str(r.http_5xx),
        )  # fmt: skip
    console.print(table)


def _down(folder: Path, _: argparse.Namespace) -> None:
    stopped = edge.down(folder)
    console.print("Stopped the edge." if stopped else f"No edge runs from {folder}.")


def _print_rows(rows: list[edge.ServerRow]) -> None:
    for r in rows:
        console.print(f"  {r.backend}/{r.server}: {r.status}, weight {r.weight}")


def _weight(folder: Path, args: argparse.Namespace) -> None:
    rows = edge.set_weight(folder, args.cluster, args.weight)
    console.print(f"{args.cluster} now weighs {args.weight} in every split it is part of:")
    _print_rows(rows)


def _state(folder: Path, args: argparse.Namespace) -> None:
    state = edge.AdminState.DRAIN if args.action == "drain" else edge.AdminState.READY
    rows = edge.set_state(folder, args.cluster, state)
    what = "takes no new requests" if args.action == "drain" else "takes requests again"
    console.print(f"{args.cluster} {what} (those in flight go on):")
    _print_rows(rows)


def _sync_residency(folder: Path, args: argparse.Namespace) -> None:
    spec = edge.load_spec(Path(args.config))
    changes = edge.sync_residency(folder, _residency(spec))
    console.print(
        "Residency map updated: "
        + ", ".join(f"{k} {', '.join(v) or 'none'}" for k, v in changes.items())
    )


def add_parser(sub) -> None:
    """``aimass edge ...`` under the ``aimass`` parser's subcommands."""
    p = sub.add_parser("edge", help="HAProxy across clusters: up, status, weight, drain, down")
    p.set_defaults(run=cmd_edge)
    actions = p.add_subparsers(dest="action", required=True)
    with_config = []
    for name, text in (
        ("check", "render an edge spec and have HAProxy check it"),
        ("up", "start the edge, or reload the running one (no connection dropped)"),
        ("residency", "re-read the key stores' residency into the running edge"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", required=True, help="the edge spec (YAML)")
        with_config.append(action)
    status = actions.add_parser("status", help="every cluster's state, weight and checks")
    down = actions.add_parser("down", help="stop the edge (requests in flight finish)")
    weight = actions.add_parser("weight", help="set a cluster's weight (0-256), no reload")
    weight.add_argument("cluster")
    weight.add_argument("weight", type=int)
    drain = actions.add_parser("drain", help="no new requests to a cluster")
    drain.add_argument("cluster")
    ready = actions.add_parser("ready", help="requests to a cluster again")
    ready.add_argument("cluster")
    for action in (*with_config, status, down, weight, drain, ready):
        action.add_argument("--state-dir", help="the edge's files (default <AIMASS_HOME>/edge)")
