"""``aimass keys``: the gateway's API keys, in the cluster's key store.

aimass keys create NAME [--scope predict|admin]... [--rate R [--burst B]]
                 [--datacenter DC]... [--home DC] [--tenant T]
aimass keys list | revoke ID
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.table import Table

from cluster.cli.console import make_console
from cluster.settings import Settings

if TYPE_CHECKING:
    from serve_apps.keys import KeyRecord

console = make_console()


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


def add_parser(sub) -> None:
    """``aimass keys ...`` under the ``aimass`` parser's subcommands."""
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
