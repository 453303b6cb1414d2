"""``aimass release``: the release controller's running releases, as it tells them.

aimass release status [MODEL] | abort MODEL [--reason WHY]
"""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from cluster import local
from cluster.cli.console import make_console
from cluster.exceptions import ClusterError
from cluster.settings import Settings

console = make_console()


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


def add_parser(sub) -> None:
    """``aimass release ...`` under the ``aimass`` parser's subcommands."""
    release = sub.add_parser("release", help="running releases: status, abort")
    release.set_defaults(run=cmd_release)
    actions = release.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="each model's latest release, or MODEL's")
    status.add_argument("model", nargs="?", metavar="MODEL")
    abort = actions.add_parser("abort", help="end MODEL's release: traffic back to champion")
    abort.add_argument("model", metavar="MODEL")
    abort.add_argument("--reason", default="aborted by an operator", help="kept in its history")
