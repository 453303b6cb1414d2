"""What releases export: Ray's metrics, which Prometheus scrapes (outside Ray they record
nothing). The shipped alerts (``cluster.monitoring.alerts``) and the releases dashboard read
them by these names."""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

from actors.release.state import Release


class ReleaseMetrics:
    """What releases export (Ray's metrics → Prometheus; outside Ray they record nothing)."""

    def __init__(self) -> None:
        self._share = Gauge(
            "aimass_release_candidate_share",
            description="Share of a model's traffic the release candidate answers (0-1).",
            tag_keys=("model",),
        )
        self._stalled = Gauge(
            "aimass_release_stalled",
            description="1 while a release step's traffic flows but none reaches the "
            "candidate (see decision.Action.STALL), else 0.",
            tag_keys=("model",),
        )
        self._events = Counter(
            "aimass_release_events",
            description="Release moves: start, step, promote, rollback, abort, passed; and "
            "stalled (a step whose candidate gets none of the traffic).",
            tag_keys=("model", "action"),
        )

    def moved(self, r: Release, action: str) -> None:
        """A move of ``r`` (start, step, ..., ``decision.Action``'s values)."""
        self._events.inc(tags={"model": r.model, "action": action})
        self._share.set(r.share, tags={"model": r.model})

    def stalled(self, r: Release, stalled: bool) -> None:
        """Whether ``r``'s step is stalled, as its latest decision says (every tick)."""
        self._stalled.set(float(stalled), tags={"model": r.model})
