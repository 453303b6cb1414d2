"""What a release is judged on: each version's answers over the current step, and the
thresholds the candidate must stay within.

Gateway replicas report every answer (``routing.Outcome``); ``OnlineWindows`` keeps them per
(model, version) until the release moves to its next step, and keeps each request's
predictions a while so labels fed back later score the versions that answered it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from actors.release.config import Thresholds
from actors.release.routing import Outcome

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
        # A failed answer's latency is a timeout's or an error's, and a cold one's is the
        # version's load on its replica (a candidate's first answers): not the model's.
        if o.ok and not o.cold:
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


def broken_threshold(t: Thresholds, champion: OnlineStats, candidate: OnlineStats) -> str | None:
    """Which threshold the candidate breaks, as a sentence; None while it is within all.

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


class OnlineWindows:
    """Every version's ``OnlineStats`` over its current window, and recent predictions
    awaiting their labels (the newest ``predictions_kept`` request ids)."""

    def __init__(self, predictions_kept: int = _PREDICTIONS_KEPT) -> None:
        self._stats: dict[tuple[str, int], OnlineStats] = {}
        self._predictions: OrderedDict[str, list[tuple[int, list[int]]]] = OrderedDict()
        self._predictions_kept = predictions_kept

    def of(self, model: str, version: int) -> OnlineStats:
        return self._stats.setdefault((model, version), OnlineStats())

    def restart(self, model: str, versions: Iterable[int]) -> None:
        """New, empty windows: a step is judged only on the answers given during it."""
        for v in versions:
            self._stats[(model, v)] = OnlineStats()

    def record(self, outcomes: Iterable[Outcome]) -> None:
        for o in outcomes:
            self.of(o.model, o.version).add(o)
            if o.request_id and o.predictions is not None:
                self._predictions.setdefault(o.request_id, []).append((o.version, o.predictions))
                self._predictions.move_to_end(o.request_id)
        while len(self._predictions) > self._predictions_kept:
            self._predictions.popitem(last=False)

    def score(self, model: str, request_id: str, labels: list[int]) -> dict[int, float]:
        """Each answering version's accuracy on ``labels``, added to its window.

        Raises:
            KeyError: no prediction of that request id is kept (unknown, or dropped).
            ValueError: ``labels`` is not one label per instance of the request; nothing
                is scored then.
        """
        answered = self._predictions.get(request_id)
        if answered is None:
            raise KeyError(request_id)
        for _, predictions in answered:
            if len(predictions) != len(labels):
                raise ValueError(
                    f"{len(labels)} labels for a request of {len(predictions)} instances."
                )
        scored = {}
        for version, predictions in answered:
            stats = self.of(model, version)
            correct = sum(int(p == y) for p, y in zip(predictions, labels, strict=True))
            stats.labelled += len(labels)
            stats.correct += correct
            scored[version] = correct / len(labels)
        return scored
