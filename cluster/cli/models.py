"""``aimass models``: the registry's models, their aliases, history and lineage.

aimass models list | show NAME[@ALIAS|@VERSION] | promote NAME VERSION | rollback NAME
              | diff REF_A REF_B | history NAME       (promote/rollback/history: --alias)
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.table import Table

from cluster.cli.console import make_console
from cluster.settings import Settings

if TYPE_CHECKING:  # the registry pulls in MLflow: only `aimass models` pays for that import
    from models.alias_events import AliasEvent
    from models.registry import Registry

console = make_console()


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
    models = registry.list_models()
    table = Table(
        "model", "latest", "aliases", title="Models",
        caption=_regional_note([a for m in models for a in m.aliases]),
    )  # fmt: skip
    for m in models:
        aliases = ", ".join(f"{a}={v}" for a, v in m.aliases.items())
        table.add_row(m.name, str(m.latest_version or ""), aliases)
    console.print(table)


def _regional_note(aliases: list[str]) -> str | None:
    """What regional aliases mean (actors/release/aliases.py), when any is shown."""
    if not any(a.startswith(("champion-", "candidate-")) for a in aliases):
        return None
    return (
        "champion-<region>: what that region's clusters serve while a rollout (aimass "
        "rollout) goes region by region; other regions serve champion. Their releases move "
        "champion-<region> / candidate-<region>."
    )


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
        versions = registry.versions(args.ref)
        table = Table(
            "version", "aliases", "parent", "run", "git sha", "data", title=args.ref,
            caption=_regional_note([a for v in versions for a in v.aliases]),
        )  # fmt: skip
        for v in versions:
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


def add_parser(sub) -> None:
    """``aimass models ...`` under the ``aimass`` parser's subcommands."""
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
