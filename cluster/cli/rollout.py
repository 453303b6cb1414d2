"""``aimass rollout``: a candidate version, one datacenter's cluster at a time.

    aimass rollout --model digits --candidate 7 \\
        --cluster us-east=http://127.0.0.1:8265 --cluster eu-west=http://127.0.0.1:8365 \\
        [--token us-east=~/.ray/us-east.token ...] [--steps 20,50,100 --min-step-s 30 ...]

The clusters share one registry (an MLflow tracking server: this shell's
``AIMASS_TRACKING_URI``, as each cluster's). The rollout

1. pins every region it will reach to the current champion (``champion-<region>``): from
   then on each cluster serves its region's alias (``actors.release.aliases``), so nothing
   changes for clients yet;
2. releases the candidate in the first region's cluster: ``python -m jobs.release --model M
   --candidate V`` submitted through that cluster's Jobs API with its token, followed to its
   end (the canary of the release controller there, with its gates, moves
   ``champion-<region>``); then the next region, only once the previous one was promoted;
3. when every region passed: moves ``champion`` to the candidate and removes the regional
   aliases and ``candidate`` (every cluster serves ``champion`` again, now the candidate).

It stops at the first region whose release fails: that region's controller has rolled its
canary back; the regions promoted before it are moved back to the champion; the regions
after it never saw the candidate. The regional aliases and ``candidate`` are removed (as a
single cluster's rollback does), and the exit status is 1.
A rollout interrupted midway resumes: regions already at the candidate are skipped.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from cluster.cli.console import make_console
from cluster.exceptions import ClusterError
from cluster.settings import Settings

REPO = Path(__file__).resolve().parents[2]  # the working dir the release jobs upload
# jobs.release's options that a rollout passes on to each region's canary (a unit test
# holds them to ReleaseConfig's and Thresholds' fields; not imported here: the CLI starts
# without Ray).
RELEASE_OPTIONS = (
    "steps", "min_step_s", "min_requests", "max_release_s", "max_error_rate",
    "max_latency_ratio", "latency_slack_ms", "min_agreement", "max_accuracy_drop",
    "min_samples",
)  # fmt: skip
console = make_console()


def _say(region: str, text: str) -> None:
    """``[region] text``, as written: ``markup=False``, or rich would take ``[us-east]``
    (and a job's own ``[release]``) for a style tag and print nothing of it."""
    console.print(f"[{region}] {text}", markup=False, highlight=False)


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """What a rollout does, decided from the registry's aliases before anything moves.

    Attributes:
        champion: The version every region serves before (``champion``).
        candidate: The version rolled out.
        pin: Regions whose ``champion-<region>`` is made first (pointing at the champion).
        done: Regions already at the candidate (an interrupted rollout, resumed).
        todo: Regions to release the candidate in, in order.
    """

    champion: int
    candidate: int
    pin: tuple[str, ...]
    done: tuple[str, ...]
    todo: tuple[str, ...]


def plan(aliases: dict[str, int], regions: list[str], candidate: int | None) -> RolloutPlan:
    """The plan for ``regions`` (in order), from one model's aliases. ClusterError when the
    rollout cannot start (no champion, the candidate is the champion, a region pinned to
    a third version by something else)."""
    from actors.release.aliases import champion_alias
    from models.refs import CANDIDATE, CHAMPION

    champion = aliases.get(CHAMPION)
    candidate = candidate if candidate is not None else aliases.get(CANDIDATE)
    if champion is None or candidate is None:
        missing = CHAMPION if champion is None else f"{CANDIDATE} (or --candidate)"
        raise ClusterError(f"Nothing to roll out: the model has no {missing}.")
    if candidate == champion:
        raise ClusterError(f"v{candidate} is the champion already.")
    pin, done, todo = [], [], []
    for region in regions:
        pinned = aliases.get(champion_alias(region))
        if pinned is None:
            pin.append(region)
            todo.append(region)
        elif pinned == candidate:
            done.append(region)
        elif pinned == champion:
            todo.append(region)
        else:
            raise ClusterError(
                f"{champion_alias(region)} points at v{pinned}: neither the champion "
                f"v{champion} nor the candidate v{candidate} (another rollout's?). Move or "
                f"delete it first: aimass models promote MODEL VERSION --alias "
                f"{champion_alias(region)}."
            )
    return RolloutPlan(champion, candidate, tuple(pin), tuple(done), tuple(todo))


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        region, sep, rest = value.partition("=")
        if not sep or not region or not rest:
            raise ClusterError(f"--{what} {value!r}: give REGION=VALUE, e.g. us-east=…")
        if region in pairs:
            raise ClusterError(f"--{what} names {region} twice.")
        pairs[region] = rest
    return pairs


def _jobs_client(url: str, token_path: Path):
    from ray.job_submission import JobSubmissionClient

    try:
        token = token_path.expanduser().read_text().strip()
    except OSError as err:
        raise ClusterError(f"Cannot read the cluster token {token_path}: {err}") from None
    # Each cluster its own token: the header wins over the one Ray's SDK would add.
    return JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})


def _release_entrypoint(model: str, candidate: int, args: argparse.Namespace) -> str:
    flags = [f"--model {model}", f"--candidate {candidate}"]
    for name in RELEASE_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            flags.append(f"--{name.replace('_', '-')} {value}")
    return "python -m jobs.release " + " ".join(flags)


def cmd_rollout(settings: Settings, args: argparse.Namespace) -> None:
    from actors.release.aliases import champion_alias
    from cluster.cli.jobs_client import run_job
    from models.refs import CHAMPION, check_name
    from models.registry import Registry

    model = check_name(args.model, "model name")
    clusters = _pairs(args.cluster, "cluster")
    tokens = {r: Path(p) for r, p in _pairs(args.token or [], "token").items()}
    unknown = sorted(set(tokens) - set(clusters))
    if unknown:
        raise ClusterError(f"--token names {', '.join(unknown)}, which no --cluster names.")
    registry = Registry.from_settings(settings)
    p = plan(registry.all_aliases().get(model, {}), list(clusters), args.candidate)
    why = f"rollout of v{p.candidate}"
    console.print(
        f"Rolling out {model} v{p.candidate} (champion v{p.champion}) region by region: "
        + " > ".join(clusters)
    )
    for region in p.pin:
        registry.set_alias(model, champion_alias(region), p.champion, f"{why}: pinned first")
    promoted = list(p.done)
    for region in p.done:
        _say(region, f"already at v{p.candidate}")
    for region in p.todo:
        _say(region, f"release of v{p.candidate} on {clusters[region]}")
        client = _jobs_client(clusters[region], tokens.get(region, settings.token_path))
        try:
            run_job(
                settings,
                _release_entrypoint(model, p.candidate, args),
                REPO,
                echo=lambda line, r=region: _say(r, line),
                client=client,
            )
        except ClusterError as err:
            for back in promoted:
                registry.set_alias(
                    model, champion_alias(back), p.champion, f"{why} stopped at {region}"
                )
            _unpin(registry, model, clusters, p.candidate)
            moved = f"; moved back in {', '.join(promoted)}" if promoted else ""
            later = p.todo[p.todo.index(region) + 1 :]
            untouched = f"; not started in {', '.join(later)}" if later else ""
            raise ClusterError(
                f"The release in {region} failed: v{p.candidate} rolled back there{moved}"
                f"{untouched}. Every region serves v{p.champion}.\n{err}"
            ) from None
        now = registry.all_aliases().get(model, {}).get(champion_alias(region))
        if now != p.candidate:
            raise ClusterError(f"{region}'s release ended, but {champion_alias(region)} is v{now}.")
        promoted.append(region)
        _say(region, f"promoted: {champion_alias(region)} -> v{p.candidate}")
    registry.set_alias(model, CHAMPION, p.candidate, f"{why}: every region passed")
    _unpin(registry, model, clusters, p.candidate)
    console.print(f"Rolled out: {model}@champion is v{p.candidate} in {', '.join(clusters)}.")


def _unpin(registry, model: str, clusters: dict[str, str], candidate: int) -> None:
    """Remove the regional aliases (every cluster serves ``champion`` again) and the
    ``candidate`` alias if it names the version rolled out, promoted or rolled back (a
    single cluster's release removes it either way too)."""
    from actors.release.aliases import candidate_alias, champion_alias
    from models.refs import CANDIDATE

    for region in clusters:
        registry.remove_alias(model, champion_alias(region))
        registry.remove_alias(model, candidate_alias(region))
    if registry.all_aliases().get(model, {}).get(CANDIDATE) == candidate:
        registry.remove_alias(model, CANDIDATE)


def add_parser(sub) -> None:
    """``aimass rollout ...`` under the ``aimass`` parser's subcommands."""
    p = sub.add_parser("rollout", help="release a candidate one datacenter's cluster at a time")
    p.set_defaults(run=cmd_rollout)
    p.add_argument("--model", required=True)
    p.add_argument("--candidate", type=int, help="the version (default: its candidate alias)")
    p.add_argument(
        "--cluster",
        action="append",
        required=True,
        metavar="REGION=DASHBOARD_URL",
        help="a region's cluster (its Ray dashboard / Jobs API), in rollout order; repeat",
    )
    p.add_argument(
        "--token",
        action="append",
        metavar="REGION=TOKEN_FILE",
        help="that cluster's Ray token file (default: AIMASS_TOKEN_PATH); repeat",
    )
    for name in RELEASE_OPTIONS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, help="passed to jobs.release")
