"""A replica's watch on input drift: sampled inputs counted against each version's training
profile, off the request path, exported as ``aimass_drift_score{model, version}``.

The request path only appends a reference to the batch it already holds (every
``sample_every``-th batch, up to ``max_pending_rows`` waiting); a daemon thread folds the
waiting rows in every ``interval_s``, weighs older counts down past ``window_rows`` so the
score follows the most recent ~``window_rows`` inputs, and sets the gauge once ``min_rows``
have been seen. Every replica scores the share of traffic it serves and the alert takes the
largest, so a replica that stops getting a version's traffic (Serve sends a model's requests
to the replicas that hold it) must not keep its last score: after ``idle_s`` without rows it
reports NaN, which PromQL's ``max`` and comparisons pass over (a gauge cannot be removed),
and starts counting afresh when rows come again.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
import time

import numpy as np

from models.drift import InputCounts, InputProfile

logger = logging.getLogger("ray.serve")
DRIFT_SCORE = "aimass_drift_score"


@functools.cache
def _gauge():
    from ray.serve.metrics import Gauge

    return Gauge(
        DRIFT_SCORE,
        description="Largest per-feature population stability index of a version's recent "
        "inputs against its training split (> 0.2: significant drift).",
        tag_keys=("model", "version"),
    )


class DriftWatch:
    def __init__(
        self,
        interval_s: float = 5.0,
        sample_every: int = 1,
        max_pending_rows: int = 4096,
        min_rows: int = 300,
        window_rows: int = 2000,
        idle_s: float = 60.0,
    ) -> None:
        self.interval_s, self.sample_every = interval_s, sample_every
        self.max_pending_rows, self.min_rows = max_pending_rows, min_rows
        self.window_rows, self.idle_s = window_rows, idle_s
        self._seen_at: dict[tuple[str, int], float] = {}
        self._pending: collections.deque = collections.deque()
        self._pending_rows = 0
        self._batches = 0
        self._counts: dict[tuple[str, int], InputCounts] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def observe(self, model: str, version: int, profile: InputProfile | None, x: np.ndarray):
        """Called on the request path with a batch just scored: O(1), never raises."""
        self._batches += 1
        if profile is None or self._batches % self.sample_every:
            return
        with self._lock:
            if self._pending_rows + len(x) > self.max_pending_rows:
                return  # the fold is behind: skip rather than queue without bound
            self._pending.append((model, version, profile, x))
            self._pending_rows += len(x)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
            self._thread.start()

    def fold(self, now: float | None = None) -> dict[tuple[str, int], float]:
        """Count the waiting rows in; the scores of versions past ``min_rows``, NaN for
        those idle here for ``idle_s`` (reported once, then forgotten)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            batches, self._pending, self._pending_rows = self._pending, collections.deque(), 0
        for model, version, profile, x in batches:
            counts = self._counts.get((model, version))
            if counts is None:
                counts = self._counts[model, version] = InputCounts(profile)
            counts.add(x)
            self._seen_at[model, version] = now
            if counts.rows > self.window_rows:
                counts.decay(self.window_rows / counts.rows)
        idle = [key for key, at in self._seen_at.items() if now - at > self.idle_s]
        for key in idle:
            del self._counts[key], self._seen_at[key]
        scores = {
            key: counts.score()
            for key, counts in self._counts.items()
            if counts.rows >= self.min_rows
        }
        return scores | dict.fromkeys(idle, math.nan)

    def _run(self) -> None:
        event = threading.Event()
        while not event.wait(self.interval_s):
            try:
                for (model, version), score in self.fold().items():
                    _gauge().set(score, tags={"model": model, "version": str(version)})
            except Exception:  # a bad batch must not end the watch
                logger.exception("drift: folding inputs failed")
