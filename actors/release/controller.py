"""The release controller: which version answers each request, and whether a candidate lives.

``ReleaseController`` is the actor (a plain class; ``controller_actor`` makes it the one named,
detached actor of the Serve namespace). It holds the routing table every gateway replica
follows — per model: the ``champion`` version, and while a release runs the candidate, its
share and the mode (``actors.release.config``) — and it decides releases by itself:

- Gateway replicas send it each answer's outcome in batches (version, ok, latency, whether
  it agreed with the champion, the predictions for later feedback). Labels sent back through
  the feedback endpoint turn stored predictions into accuracy per version.
- Every ``tick_s`` it re-reads the registry's aliases (a promotion made elsewhere serves
  within a tick), then judges each running release on the window of its current step: a
  candidate that breaks a threshold is rolled back at once; one that held for the step's
  time and requests moves to the next step; the last canary step promotes it (``champion``
  moves). Every move is logged, kept in the release's history, persisted (a restarted
  controller carries on) and exported as metrics.

Failures of the candidate never reach clients: the gateway answers them from the champion
and only reports them here, so rolling back a bad candidate costs no failed requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from actors.release.config import ReleaseConfig, Thresholds
from actors.release.routing import Mode, Outcome, Route

logger = logging.getLogger(__name__)

CONTROLLER_NAME = "aimass_release_controller"
RUNNING, PROMOTED, ROLLED_BACK, PASSED, ABORTED = (
    "running",
    "promoted",
    "rolled_back",
    "passed",
    "aborted",
)
_LATENCIES_KEPT = 4096  # per version and step: enough for a stable p95
_PREDICTIONS_KEPT = 100_000  # request ids awaiting feedback, oldest dropped first


@dataclass(slots=True)
class OnlineStats:
    """A version's online metrics over one window (a release step)."""

    requests: int = 0
    errors: int = 0
    compared: int = 0
    agreed: int = 0
    labelled: int = 0
    correct: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=_LATENCIES_KEPT))

    def add(self, o: Outcome) -> None:
        self.requests += 1
        self.errors += not o.ok
        if o.ok:
            self.latencies_ms.append(o.latency_ms)
        if o.agreed is not None:
            self.compared += 1
            self.agreed += o.agreed

    def p95_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else None

    def summary(self) -> dict:
        p50 = float(np.percentile(self.latencies_ms, 50)) if self.latencies_ms else None
        return {
            "requests": self.requests,
            "error_rate": self.errors / self.requests if self.requests else None,
            "p50_ms": p50,
            "p95_ms": self.p95_ms(),
            "agreement": self.agreed / self.compared if self.compared else None,
            "accuracy": self.correct / self.labelled if self.labelled else None,
            "compared": self.compared,
            "labelled": self.labelled,
        }


def judge(t: Thresholds, champion: OnlineStats, candidate: OnlineStats) -> str | None:
    """Why the candidate must be rolled back, or None while it is within every threshold.

    Each check waits for ``t.min_samples`` samples of its kind, so early noise cannot end a
    release, and a check with nothing to compare (no labels fed back) never fires."""
    n = t.min_samples
    if candidate.requests >= n and candidate.errors / candidate.requests > t.max_error_rate:
        return f"error rate {candidate.errors}/{candidate.requests} > {t.max_error_rate:.1%}"
    if len(candidate.latencies_ms) >= n and len(champion.latencies_ms) >= n:
        limit = champion.p95_ms() * t.max_latency_ratio + t.latency_slack_ms
        if candidate.p95_ms() > limit:
            return f"p95 latency {candidate.p95_ms():.1f} ms > {limit:.1f} ms"
    if candidate.compared >= n and candidate.agreed / candidate.compared < t.min_agreement:
        return (
            f"agreement with the champion {candidate.agreed}/{candidate.compared} "
            f"< {t.min_agreement:.0%}"
        )
    if candidate.labelled >= n and champion.labelled >= n:
        drop = champion.correct / champion.labelled - candidate.correct / candidate.labelled
        if drop > t.max_accuracy_drop:
            return f"accuracy {drop:.1%} below the champion's (> {t.max_accuracy_drop:.1%})"
    return None


@dataclass(slots=True)
class Release:
    """A release's state, persisted as JSON after every move."""

    id: str
    model: str
    champion: int
    candidate: int
    config: dict
    state: str = RUNNING
    step: int = 0
    started: float = field(default_factory=time.time)
    step_started: float = field(default_factory=time.time)
    history: list[dict] = field(default_factory=list)

    @property
    def cfg(self) -> ReleaseConfig:
        return ReleaseConfig.model_validate(self.config)

    @property
    def share(self) -> float:
        """The candidate's share of traffic (shadow: of copies) now, 0..1."""
        if self.state == PROMOTED:
            return 1.0
        if self.state != RUNNING:
            return 0.0
        cfg = self.cfg
        return (cfg.steps[self.step] if cfg.mode == "canary" else cfg.weight) / 100


class ReleaseController:
    def __init__(self, tick_s: float = 2.0) -> None:
        from cluster import storage
        from cluster.settings import get_settings
        from models.registry import Registry

        settings = get_settings()
        self.registry = Registry.from_settings(settings)
        self._state_uri = storage.join(settings.storage_root, "releases.json")
        self.tick_s = tick_s
        self.champions: dict[str, int] = {}
        self.releases: dict[str, Release] = self._load()
        self.stats: dict[tuple[str, int], OnlineStats] = {}
        self.predictions: OrderedDict[str, list[tuple[int, list[int]]]] = OrderedDict()
        self._signatures: dict[tuple[str, int], dict] = {}
        self._loop: asyncio.Task | None = None
        self._metrics = _release_metrics()

    # ---- what gateways call ----------------------------------------------------------

    async def routes(self) -> dict[str, Route]:
        """Per served model: champion, and candidate/share/mode/release while one runs."""
        await self._ensure_running()
        table = {name: Route(champion=v) for name, v in self.champions.items()}
        for r in self.releases.values():
            if r.state == RUNNING and r.model in table:
                cfg = r.cfg
                table[r.model] = Route(
                    champion=table[r.model].champion,
                    candidate=r.candidate,
                    share=r.share,
                    mode=Mode(cfg.mode),
                    compare=cfg.compare,
                    release=r.id,
                )
        return table

    async def record(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self._window(o.model, o.version).add(o)
            if o.request_id and o.predictions is not None:
                self.predictions.setdefault(o.request_id, []).append((o.version, o.predictions))
                self.predictions.move_to_end(o.request_id)
        while len(self.predictions) > _PREDICTIONS_KEPT:
            self.predictions.popitem(last=False)

    async def feedback(self, model: str, request_id: str, labels: list[int]) -> dict:
        """Score the predictions a request got (every version that answered it) against
        ``labels``. Raises KeyError for an unknown or expired request id."""
        answered = self.predictions.get(request_id)
        if answered is None:
            raise KeyError(request_id)
        scored = {}
        for version, predictions in answered:
            if len(predictions) != len(labels):
                raise ValueError(
                    f"{len(labels)} labels for a request of {len(predictions)} instances."
                )
            stats = self._window(model, version)
            correct = sum(int(p == y) for p, y in zip(predictions, labels, strict=True))
            stats.labelled += len(labels)
            stats.correct += correct
            scored[version] = correct / len(labels)
        return scored

    async def signature(self, model: str, version: int) -> dict:
        """A version's signature and task (cached: versions never change)."""
        key = (model, version)
        if key not in self._signatures:
            self._signatures[key] = await asyncio.to_thread(self._read_signature, model, version)
        return self._signatures[key]

    # ---- what operators call (jobs.release, aimass release) ---------------------------

    async def start(self, config: dict) -> dict:
        """Start a release; returns its status. Raises ValueError if it cannot start."""
        from models.refs import CANDIDATE, CHAMPION, ModelRef

        await self._ensure_running()
        cfg = ReleaseConfig.model_validate(config)
        current = self.releases.get(cfg.model)
        if current and current.state == RUNNING:
            raise ValueError(
                f"A release of {cfg.model} (candidate v{current.candidate}) is running: "
                f"abort it first (aimass release abort {cfg.model})."
            )
        resolve = self.registry.resolve
        champion = (await asyncio.to_thread(resolve, ModelRef(cfg.model, alias=CHAMPION))).version
        if cfg.candidate is None:
            candidate = (
                await asyncio.to_thread(resolve, ModelRef(cfg.model, alias=CANDIDATE))
            ).version
        else:
            candidate = (
                await asyncio.to_thread(self.registry.get, cfg.model, cfg.candidate)
            ).version
            await asyncio.to_thread(
                self.registry.set_alias, cfg.model, CANDIDATE, candidate, "release started"
            )
        if candidate == champion:
            raise ValueError(f"{cfg.model} v{candidate} is already the champion.")
        champ_sig = await self.signature(cfg.model, champion)
        cand_sig = await self.signature(cfg.model, candidate)
        if champ_sig != cand_sig:
            raise ValueError(
                f"v{candidate} takes or returns other shapes than the champion v{champion} "
                f"({cand_sig['signature']} vs {champ_sig['signature']}): clients would break."
            )
        self.champions[cfg.model] = champion
        release = Release(uuid.uuid4().hex[:12], cfg.model, champion, candidate, cfg.model_dump())
        self.releases[cfg.model] = release
        self._event(release, "start", f"{cfg.mode} of v{candidate} against champion v{champion}")
        return self._status(release)

    async def abort(self, model: str, reason: str = "aborted by an operator") -> dict:
        release = self._running(model)
        await self._roll_back(release, reason, state=ABORTED)
        return self._status(release)

    async def status(self, model: str | None = None) -> list[dict]:
        await self._ensure_running()
        chosen = [self.releases[model]] if model in self.releases else []
        return [self._status(r) for r in (chosen if model else self.releases.values())]

    async def tick(self) -> None:
        """One round: aliases re-read, every running release judged (also run by the loop)."""
        await self._refresh_champions()
        for release in list(self.releases.values()):
            if release.state == RUNNING:
                try:
                    await self._judge(release)
                except Exception:  # one release's registry hiccup must not stop the others
                    logger.exception("judging release %s of %s failed", release.id, release.model)

    # ---- internals ----------------------------------------------------------------------

    async def _ensure_running(self) -> None:
        if self._loop is None or self._loop.done():
            if not self.champions:
                await self._refresh_champions()
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                logger.exception("release controller tick failed; retrying")
            await asyncio.sleep(self.tick_s)

    async def _refresh_champions(self) -> None:
        aliases = await asyncio.to_thread(self.registry.all_aliases)
        self.champions = {name: a["champion"] for name, a in aliases.items() if "champion" in a}

    def _window(self, model: str, version: int) -> OnlineStats:
        return self.stats.setdefault((model, version), OnlineStats())

    async def _judge(self, r: Release) -> None:
        cfg = r.cfg
        champion, candidate = self._window(r.model, r.champion), self._window(r.model, r.candidate)
        if self.champions.get(r.model) != r.champion:
            await self._roll_back(
                r,
                f"champion moved to v{self.champions.get(r.model)} outside the release",
                state=ABORTED,
            )
            return
        reason = judge(cfg.thresholds, champion, candidate)
        if reason:
            await self._roll_back(r, reason)
            return
        held = time.time() - r.step_started
        if time.time() - r.started > cfg.max_release_s:
            await self._roll_back(
                r, f"not enough traffic to decide within {cfg.max_release_s:.0f} s"
            )
            return
        needed = candidate.compared if cfg.mode == "shadow" else candidate.requests
        if cfg.mode == "ab" or held < cfg.min_step_s or needed < cfg.min_requests:
            return
        if cfg.mode == "shadow":
            r.state = PASSED
            self._event(r, "passed", f"{needed} comparisons within thresholds")
            return
        if r.step + 1 < len(cfg.steps):
            r.step += 1
            self._new_window(r)
            self._event(r, "step", f"to {cfg.steps[r.step]:g} %")
            if cfg.steps[r.step] < 100:
                return
        await self._promote(r)

    async def _promote(self, r: Release) -> None:
        from models.refs import CANDIDATE, CHAMPION

        await asyncio.to_thread(
            self.registry.set_alias,
            r.model,
            CHAMPION,
            r.candidate,
            f"release {r.id}: canary passed",
        )
        await asyncio.to_thread(self.registry.remove_alias, r.model, CANDIDATE)
        self.champions[r.model] = r.candidate
        r.state = PROMOTED
        self._event(r, "promote", f"v{r.candidate} is the champion")

    async def _roll_back(self, r: Release, reason: str, state: str = ROLLED_BACK) -> None:
        from models.refs import CANDIDATE

        r.state = state  # traffic returns to the champion at the next routes() call
        self._event(r, "rollback" if state == ROLLED_BACK else "abort", reason)
        await asyncio.to_thread(self.registry.remove_alias, r.model, CANDIDATE)
        await asyncio.to_thread(
            self.registry.tag_version,
            r.model,
            r.candidate,
            "aimass.release",
            f"{state} in release {r.id}: {reason}",
        )

    def _new_window(self, r: Release) -> None:
        r.step_started = time.time()
        for v in (r.champion, r.candidate):
            self.stats[(r.model, v)] = OnlineStats()

    def _running(self, model: str) -> Release:
        r = self.releases.get(model)
        if r is None or r.state != RUNNING:
            raise ValueError(f"No release of {model} is running.")
        return r

    def _event(self, r: Release, action: str, detail: str) -> None:
        entry = {
            "at": time.time(),
            "action": action,
            "share": r.share,
            "detail": detail,
            "champion": self._window(r.model, r.champion).summary(),
            "candidate": self._window(r.model, r.candidate).summary(),
        }
        r.history.append(entry)
        if action == "start":
            self._new_window(r)
        logger.warning(
            "[release] %s %s v%d: %s %s (share %.0f %%)",
            r.id,
            r.model,
            r.candidate,
            action,
            detail,
            100 * r.share,
        )
        self._metrics["steps"].inc(tags={"model": r.model, "action": action})
        self._metrics["share"].set(r.share, tags={"model": r.model})
        self._save()

    def _status(self, r: Release) -> dict:
        return asdict(r) | {
            "share": r.share,
            "online": {
                "champion": self._window(r.model, r.champion).summary(),
                "candidate": self._window(r.model, r.candidate).summary(),
            },
        }

    def _read_signature(self, model: str, version: int) -> dict:
        from models import package
        from models.zoo import architecture

        with tempfile.TemporaryDirectory(prefix="aimass-signature-") as tmp:
            folder = self.registry.fetch(self.registry.get(model, version), Path(tmp))
            cfg = package.PackageConfig.read(folder)
        return {"signature": cfg.signature.to_dict(), "task": architecture(cfg.architecture).task}

    def _load(self) -> dict[str, Release]:
        from cluster import storage

        if not storage.exists(self._state_uri):
            return {}
        data = json.loads(storage.read_bytes(self._state_uri))
        return {r["model"]: Release(**r) for r in data["releases"]}

    def _save(self) -> None:
        from cluster import storage

        body = {"releases": [asdict(r) for r in self.releases.values()]}
        storage.write_bytes(self._state_uri, json.dumps(body, indent=1).encode())


def _release_metrics() -> dict:
    from ray.util.metrics import Counter, Gauge

    return {
        "share": Gauge(
            "aimass_release_candidate_share",
            description="Share of a model's traffic the release candidate answers (0-1).",
            tag_keys=("model",),
        ),
        "steps": Counter(
            "aimass_release_events",
            description="Release moves: start, step, promote, rollback, abort, passed.",
            tag_keys=("model", "action"),
        ),
    }


def controller_actor():
    """The one ReleaseController (restarted from its persisted releases if it dies)."""
    from actors import serve_singleton

    return serve_singleton(ReleaseController, CONTROLLER_NAME, max_concurrency=64)
