"""The release controller: which version answers each request, and whether a candidate lives.

``ReleaseController`` holds the routing table every gateway replica follows — per model: the
``champion`` version, and while a release runs the candidate, its share and the mode
(``actors.release.config``) — and it decides releases by itself:

- Gateway replicas send it each answer's outcome in batches (version, ok, latency, whether
  it agreed with the champion, the predictions for later feedback). Labels sent back through
  the feedback endpoint turn stored predictions into accuracy per version
  (``actors.release.stats``).
- Every ``tick_s`` it re-reads the registry's aliases (a promotion made elsewhere serves
  within a tick), asks ``decision.decide`` what each running release does next, and applies
  the answer: a candidate that breaks a threshold is rolled back at once; one that held for
  the step's time and requests moves to the next step; the last canary step promotes it
  (``champion`` moves). Every move is logged, kept in the release's history, persisted (a
  restarted controller carries on) and exported as metrics.

Across datacenters (one cluster each, one shared registry) a controller serves and releases
a model on its region's aliases (``champion-<region>``, ``candidate-<region>``) while a
region-by-region rollout has pinned them, and on ``champion``/``candidate`` otherwise: the
rule is ``actors.release.aliases``; a single cluster never sees a regional alias.

Failures of the candidate never reach clients: the gateway answers them from the champion
and only reports them here, so rolling back a bad candidate costs no failed requests.

It is a plain class, given its registry and where to persist, so it runs in a test without
Ray or MLflow. ``controller_actor`` makes it the one named, detached actor of the Serve
namespace, with the cluster's registry built in the actor's own process.
"""

from __future__ import annotations

import asyncio
import logging
import pkgutil
import time
import uuid
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from actors.release.aliases import candidate_alias, champion_alias, release_region, serving
from actors.release.config import ReleaseConfig
from actors.release.decision import Action, Decision, decide
from actors.release.exceptions import ReleaseError
from actors.release.metrics import ReleaseMetrics
from actors.release.routing import Mode, Outcome, Route
from actors.release.state import Release, ReleaseState, ReleaseStore
from actors.release.stats import OnlineWindows
from models.refs import CANDIDATE

logger = logging.getLogger(__name__)

CONTROLLER_NAME = "aimass_release_controller"
# The deployed controller's constructor arguments (the MLflow registry, the storage URI),
# named by import path like a Serve deployment: only the actor's process imports them. A
# Gateway replica creates the actor when it finds none, and must never load MLflow or torch.
DEPLOYED_PARTS = "actors.release.deployed:parts"
# What the controller's messages tell operators to run (cluster/cli/aimass.py; a unit test
# parses both with the CLI's parser).
ABORT_COMMAND = "aimass release abort {model}"
STATUS_COMMAND = "aimass release status {model}"


@runtime_checkable
class ReleaseRegistry(Protocol):
    """What the controller reads and writes in the model registry (on the cluster:
    ``actors.release.deployed.ClusterRegistry``, over MLflow). Calls block: the controller
    makes them in a thread."""

    def all_aliases(self) -> dict[str, dict[str, int]]:
        """Every registered model's aliases, ``{model: {alias: version}}``."""

    def aliased(self, model: str, alias: str) -> int:
        """The version ``alias`` points at. Raises ModelNotFound when there is none."""

    def signature(self, model: str, version: int) -> dict:
        """``{"signature": ..., "task": ...}`` of a version. Raises ModelNotFound."""

    def set_alias(self, name: str, alias: str, version: int, reason: str = "") -> object:
        """Point ``alias`` at ``version``, recording ``reason``."""

    def remove_alias(self, name: str, alias: str) -> int | None:
        """Delete ``alias``."""

    def tag_version(self, name: str, version: int, key: str, value: str) -> None:
        """Set a tag on a version."""


class ReleaseController:
    """Routes, outcomes and releases of every served model (see the module docstring).

    Args:
        registry: Where aliases live and versions are read.
        state_uri: Where releases are persisted (``<storage>/releases.json`` on a cluster).
        region: The region of this controller's cluster (``AIMASS_REGION``): a model with
            a ``champion-<region>`` alias is served and released here on its regional
            aliases (``actors.release.aliases``); None or no such alias: ``champion``.
        tick_s: Seconds between the background loop's rounds; the first call from a
            gateway or an operator starts it (an actor has no event loop in ``__init__``).
            None: no loop, the caller calls ``tick()``.
        clock: Unix time. Tests pass their own, to move time without sleeping.
    """

    def __init__(
        self,
        registry: ReleaseRegistry,
        state_uri: str,
        tick_s: float | None = 2.0,
        clock: Callable[[], float] = time.time,
        region: str | None = None,
    ) -> None:
        self.registry = registry
        self.region = region
        self.store = ReleaseStore(state_uri)
        self.tick_s = tick_s
        self._clock = clock
        self.releases: dict[str, Release] = self.store.load()
        self.champions: dict[str, int] = {}  # what serves here, by the aliases' rule
        self._aliases: dict[str, dict[str, int]] = {}  # the registry's, as last read
        self.windows = OnlineWindows()
        self._signatures: dict[tuple[str, int], dict] = {}
        self._champions_read = False
        self._loop: asyncio.Task | None = None
        # Moves (start, abort, a tick's decisions) one at a time: each re-checks a
        # release's state after its registry calls, which yield to other calls.
        self._moving = asyncio.Lock()
        self._metrics = ReleaseMetrics()

    # ---- what gateways call ----------------------------------------------------------

    async def routes(self) -> dict[str, Route]:
        """Per served model: champion, and candidate/share/mode/release while one runs."""
        await self._ensure_running()
        table = {name: Route(champion=v) for name, v in self.champions.items()}
        for r in self._running():
            if r.model in table:
                table[r.model] = Route(
                    champion=table[r.model].champion,
                    candidate=r.candidate,
                    share=r.share,
                    mode=Mode(r.config.mode),
                    compare=r.config.compare,
                    release=r.id,
                )
        return table

    async def record(self, outcomes: list[Outcome]) -> None:
        self.windows.record(outcomes)

    async def feedback(self, model: str, request_id: str, labels: list[int]) -> dict:
        """Score the predictions a request got (every version that answered it) against
        ``labels``. Raises KeyError for an unknown or expired request id, ValueError for
        labels that do not match its instances."""
        return self.windows.score(model, request_id, labels)

    async def signature(self, model: str, version: int) -> dict:
        """A version's signature and task (cached: versions never change)."""
        key = (model, version)
        if key not in self._signatures:
            self._signatures[key] = await asyncio.to_thread(self.registry.signature, *key)
        return self._signatures[key]

    # ---- what operators call (jobs.release, aimass release) ---------------------------

    async def start(self, config: dict) -> dict:
        """Start a release; returns its status. Raises ReleaseError (a ValueError) if it
        cannot start, ModelNotFound for a missing version or alias."""
        await self._ensure_running()
        cfg = ReleaseConfig.model_validate(config)
        async with self._moving:
            self._refuse_if_running(cfg.model)
            # Read now, not at the last tick: a rollout pins regions just before it starts.
            aliases = (await asyncio.to_thread(self.registry.all_aliases)).get(cfg.model, {})
            region = release_region(aliases, self.region)
            names = champion_alias(region), candidate_alias(region)
            champion = await asyncio.to_thread(self.registry.aliased, cfg.model, names[0])
            candidate = (
                cfg.candidate
                or aliases.get(names[1])
                or await asyncio.to_thread(self.registry.aliased, cfg.model, CANDIDATE)
            )
            await self._check_can_replace(cfg.model, champion, candidate)
            if cfg.candidate is not None:
                await asyncio.to_thread(
                    self.registry.set_alias, cfg.model, names[1], candidate, "release started"
                )
            self.champions[cfg.model] = champion
            self._aliases[cfg.model] = aliases | {names[1]: candidate}
            now = self._clock()
            release = Release(
                uuid.uuid4().hex[:12], cfg.model, champion, candidate, cfg, started=now,
                region=region,
            )  # fmt: skip
            self.releases[cfg.model] = release
            self._event(
                release, "start", f"{cfg.mode} of v{candidate} against {names[0]} v{champion}"
            )
            self._new_window(release)  # judged on answers from now on only
        return self._status(release)

    async def abort(self, model: str, reason: str = "aborted by an operator") -> dict:
        """End ``model``'s running release: traffic back to the champion, ``candidate``
        alias removed. Raises ReleaseError when none runs."""
        async with self._moving:
            release = self.releases.get(model)
            if release is None or release.state is not ReleaseState.RUNNING:
                raise ReleaseError(
                    f"No release of {model} is running "
                    f"({STATUS_COMMAND.format(model=model)} shows the last one).",
                    model,
                )
            await self._apply(release, Decision(Action.ABORT, reason))
        return self._status(release)

    async def status(self, model: str | None = None) -> list[dict]:
        """The release of ``model`` (empty if it never had one), or of every model."""
        await self._ensure_running()
        if model is None:
            return [self._status(r) for r in self.releases.values()]
        return [self._status(self.releases[model])] if model in self.releases else []

    async def tick(self) -> None:
        """One round: aliases re-read, every running release decided (also run by the loop)."""
        async with self._moving:
            await self._refresh_champions()
            for release in self._running():
                try:
                    await self._apply(release, self._decide(release))
                except Exception:  # one release's registry hiccup must not stop the others
                    logger.exception("release %s of %s: a move failed", release.id, release.model)

    # ---- internals ----------------------------------------------------------------------

    async def _ensure_running(self) -> None:
        # The task first, then the awaited read: concurrent first calls start one loop.
        if self.tick_s is not None and (self._loop is None or self._loop.done()):
            self._loop = asyncio.get_running_loop().create_task(self._run())
        if not self._champions_read:
            await self._refresh_champions()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                logger.exception("release controller tick failed; retrying")
            await asyncio.sleep(self.tick_s)

    async def _refresh_champions(self) -> None:
        self._aliases = await asyncio.to_thread(self.registry.all_aliases)
        self.champions = {
            name: version
            for name, a in self._aliases.items()
            if (version := serving(a, self.region)) is not None
        }
        self._champions_read = True

    def _running(self) -> list[Release]:
        return [r for r in self.releases.values() if r.state is ReleaseState.RUNNING]

    def _refuse_if_running(self, model: str) -> None:
        current = self.releases.get(model)
        if current is not None and current.state is ReleaseState.RUNNING:
            raise ReleaseError(
                f"A release of {model} (candidate v{current.candidate}) is running: "
                f"abort it first ({ABORT_COMMAND.format(model=model)}).",
                model,
            )

    async def _check_can_replace(self, model: str, champion: int, candidate: int) -> None:
        if candidate == champion:
            raise ReleaseError(f"{model} v{candidate} is already the champion.", model)
        champ_sig = await self.signature(model, champion)
        cand_sig = await self.signature(model, candidate)  # ModelNotFound if there is none
        if champ_sig != cand_sig:
            raise ReleaseError(
                f"v{candidate} takes or returns other shapes than the champion v{champion} "
                f"({cand_sig['signature']} vs {champ_sig['signature']}): clients would break.",
                model,
            )

    def _decide(self, r: Release) -> Decision:
        champion = self.windows.of(r.model, r.champion)
        candidate = self.windows.of(r.model, r.candidate)
        # The alias this release moves (champion, or champion-<region>), as last read.
        champion_now = self._aliases.get(r.model, {}).get(champion_alias(r.region))
        return decide(r, champion_now, champion, candidate, self._clock())

    async def _apply(self, r: Release, d: Decision) -> None:
        """Carry ``d`` out: the step first (a PROMOTE may take the last one), then the end."""
        if d.step is not None:
            r.step = d.step
            self._new_window(r)
            self._event(r, Action.STEP.value, f"to {r.config.steps[r.step]:g} %")
        self._metrics.stalled(r, d.action is Action.STALL)
        if d.action is Action.PROMOTE:
            await self._promote(r, d.reason)
        elif d.action is Action.STALL and r.history[-1]["action"] != Action.STALL.value:
            self._event(r, d.action.value, d.reason)  # once per step: it warns, it moves nothing
        elif d.ends_in is not None:
            await self._end(r, d)

    async def _promote(self, r: Release, reason: str) -> None:
        # The registry first: if the write fails, the release still runs and the next tick
        # tries again; once it is done, the release is over whatever follows.
        alias = champion_alias(r.region)
        await asyncio.to_thread(
            self.registry.set_alias, r.model, alias, r.candidate, f"release {r.id}: {reason}"
        )
        self.champions[r.model] = r.candidate
        self._aliases.setdefault(r.model, {})[alias] = r.candidate
        r.state = ReleaseState.PROMOTED
        what = "the champion" if r.region is None else f"{alias}"
        self._event(r, Action.PROMOTE.value, f"v{r.candidate} is {what}: {reason}")
        await asyncio.to_thread(self.registry.remove_alias, r.model, candidate_alias(r.region))

    async def _end(self, r: Release, d: Decision) -> None:
        """PASS, ROLL_BACK or ABORT. The state first: traffic returns to the champion at the
        next routes() call, even if the registry cannot be written now."""
        r.state = d.ends_in
        self._event(r, d.action.value, d.reason)
        if d.action is Action.PASS:
            return  # a shadow that passed stays `candidate`, ready for a canary
        await asyncio.to_thread(self.registry.remove_alias, r.model, candidate_alias(r.region))
        await asyncio.to_thread(
            self.registry.tag_version,
            r.model,
            r.candidate,
            "aimass.release",
            f"{r.state.value} in release {r.id}: {d.reason}",
        )

    def _new_window(self, r: Release) -> None:
        r.step_started = self._clock()
        self.windows.restart(r.model, (r.champion, r.candidate))

    def _online(self, r: Release) -> dict:
        return {
            "champion": self.windows.of(r.model, r.champion).summary(),
            "candidate": self.windows.of(r.model, r.candidate).summary(),
        }

    def _event(self, r: Release, action: str, detail: str) -> None:
        """Record a move: history, log, metrics, and the store (a restart resumes here)."""
        r.history.append(
            {"at": self._clock(), "action": action, "share": r.share, "detail": detail}
            | self._online(r)
        )
        logger.warning(
            "[release] %s %s v%d: %s %s (share %.0f %%)",
            r.id,
            r.model,
            r.candidate,
            action,
            detail,
            100 * r.share,
        )
        self._metrics.moved(r, action)
        self.store.save(self.releases.values())

    def _status(self, r: Release) -> dict:
        """The release as JSON data, with its current windows; while it runs, what the next
        tick would do and why (e.g. how much of its step it has gathered)."""
        status = r.to_json() | {"share": r.share, "online": self._online(r)}
        if r.state is ReleaseState.RUNNING:
            d = self._decide(r)
            status["next"] = {"action": d.action.value, "reason": d.reason}
        return status


class _DeployedController(ReleaseController):
    """The controller as the cluster runs it: its parts built from the cluster's settings
    here, in the actor's process (see ``DEPLOYED_PARTS``)."""

    def __init__(self) -> None:
        super().__init__(**pkgutil.resolve_name(DEPLOYED_PARTS)())


def controller_actor():
    """The one ReleaseController actor, created by the first caller (a gateway replica, or
    ``jobs.release`` in its job); restarted from its persisted releases if it dies."""
    from actors import serve_singleton

    return serve_singleton(_DeployedController, CONTROLLER_NAME, max_concurrency=64)


def find_controller():
    """The running controller actor, or None. For operators' tools outside a job (the
    CLI): an actor they created would run without a job's code on a real cluster."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
