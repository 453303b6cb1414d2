"""``aimass datacenter``, and ``aimass up --datacenters``: one local Ray node per
datacenter, labelled with its region (``cluster.local_datacenters``), lost and brought back
for failover drills.

aimass up --datacenters A,B[,C] [--datacenter-cpus N]
aimass datacenter stop|start NAME
"""

from __future__ import annotations

import argparse

from cluster import local
from cluster.cli.console import make_console
from cluster.exceptions import ClusterError
from cluster.settings import Settings

console = make_console()


def up_datacenters(settings: Settings, names: list[str], cpus: int) -> None:
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


def add_parser(sub) -> None:
    """``aimass datacenter ...`` under the ``aimass`` parser's subcommands."""
    dc = sub.add_parser("datacenter", help="stop or start one datacenter's node (drills)")
    dc.add_argument("action", choices=["stop", "start"])
    dc.add_argument("name", help="the datacenter (its region label)")
    dc.set_defaults(run=cmd_datacenter)
