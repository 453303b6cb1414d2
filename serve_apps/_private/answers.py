"""Asking classifier versions, as a Plan says, and reporting each answer's outcome.

Every answer that counts for a release (champion, candidate, shadow copy) is reported to
the release controller through the replica's ReleaseClient: ok or not, latency, the
predicted classes (scored later by feedback) and, when another version answered the same
instances, whether the two agree. Reporting is a local append; the client sends batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Protocol

import numpy as np
from ray.serve.handle import DeploymentHandle

from actors.release.routing import Outcome
from serve_apps._private.http import ApiError
from serve_apps._private.model_ids import model_id
from serve_apps._private.prediction import Prediction
from serve_apps._private.routing import Plan
from serve_apps._private.upstream import upstream_error

logger = logging.getLogger("ray.serve")


class OutcomeSink(Protocol):
    """Where outcomes go (``ReleaseClient.record``: buffered, sent in batches)."""

    def record(self, outcome: Outcome) -> None: ...


def agree(a: Prediction, b: Prediction) -> bool:
    """Whether two versions predicted the same class for every instance."""
    return bool((a.probabilities.argmax(axis=1) == b.probabilities.argmax(axis=1)).all())


class Answers:
    """Calls Predictor replicas for one version at a time and carries out Plans.

    Args:
        predictor: The Predictor deployment (multiplexed by model id ``name:version``).
        outcomes: Where each counted answer's outcome goes.
        timeout_s: How long a version may take to answer (504 after).
    """

    def __init__(self, predictor: DeploymentHandle, outcomes: OutcomeSink, timeout_s: float):
        self.predictor, self.outcomes, self.timeout_s = predictor, outcomes, timeout_s
        self._handles: dict[str, DeploymentHandle] = {}
        self._background: set[asyncio.Task] = set()  # shadow copies, referenced until done

    async def answer(self, name: str, plan: Plan, inputs: np.ndarray, rid: str) -> Prediction:
        """The answer the client gets. A failure of ``plan.answers`` is answered by the
        fallback, if any (the client never sees a candidate fail); it is reported, and the
        release controller rolls a failing candidate back."""
        reference = None
        if plan.compare_with is not None:
            reference = asyncio.ensure_future(self.call(name, plan.compare_with, inputs))
        try:
            result = await self._observed(name, plan.answers, inputs, rid, compare_to=reference)
        except ApiError:
            if plan.fallback is None:
                raise
            logger.warning(
                "v%d of %s failed request %s: v%d answers", plan.answers, name, rid, plan.fallback
            )
            if reference is not None and plan.fallback == plan.compare_with:
                result = await reference
            else:
                result = await self._observed(name, plan.fallback, inputs, rid)
        if plan.shadow is not None:
            self._in_background(self._observed(name, plan.shadow, inputs, rid, compare_to=result))
        return result

    async def call(self, name: str, version: int, inputs: np.ndarray) -> Prediction:
        """One version's answer (not reported), or the ApiError its failure maps to."""
        mid = model_id(name, version)
        handle = self._handles.get(mid)
        if handle is None:  # one handle per version: options() builds a new one each call
            handle = self._handles[mid] = self.predictor.options(multiplexed_model_id=mid)
        try:
            return await asyncio.wait_for(handle.predict.remote(inputs), self.timeout_s)
        except Exception as err:
            raise upstream_error(err) from None

    async def _observed(
        self,
        name: str,
        version: int,
        inputs: np.ndarray,
        rid: str,
        compare_to: Prediction | Awaitable[Prediction] | None = None,
    ) -> Prediction:
        """``call``, with its outcome reported; given another version's answer (or its
        future), whether the two agree."""
        t0 = time.perf_counter()
        try:
            result = await self.call(name, version, inputs)
        except ApiError:
            self.outcomes.record(Outcome(name, version, False, 0.0, request_id=rid))
            raise
        latency_ms = (time.perf_counter() - t0) * 1e3
        agreed = None
        if compare_to is not None:
            try:
                other = compare_to if isinstance(compare_to, Prediction) else await compare_to
                agreed = agree(result, other)
            except ApiError:
                pass  # the other version failed this one: nothing to compare against
        predictions = result.probabilities.argmax(axis=1).tolist()
        self.outcomes.record(Outcome(name, version, True, latency_ms, agreed, rid, predictions))
        return result

    def _in_background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        # Its failure is already reported to the controller; retrieve it so asyncio is quiet.
        task.add_done_callback(
            lambda t: self._background.discard(t) or t.cancelled() or t.exception()
        )
