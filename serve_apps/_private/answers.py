"""Asking classifier versions, as a Plan says, in the datacenters a request may be served
in, and reporting each answer's outcome.

Every answer that counts for a release (champion, candidate, shadow copy) is reported to
the release controller through the replica's ReleaseClient: ok or not, latency, the
predicted classes (scored later by feedback) and, when another version answered the same
instances, whether the two agree. Reporting is a local append; the client sends batches.

With several datacenters, each call tries them in the request's serving order: a saturated
one (its queue full: Serve's BackPressureError) or a failing one (no answer in
``attempt_timeout_s``, a replica lost) passes the request to the next; failures count
towards ejecting that datacenter (``DatacenterHealth``). Wrong input (4xx) is never retried.
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
from serve_apps._private.datacenters import DatacenterHealth
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


SINGLE = (None,)
"""The serving order of an application with one Predictor deployment (no datacenters)."""


class Answers:
    """Calls Predictor replicas for one version at a time and carries out Plans.

    Args:
        predictors: The Predictor deployment of each datacenter (multiplexed by model id
            ``name:version``); one under the key None when the application has no datacenters.
        outcomes: Where each counted answer's outcome goes.
        timeout_s: How long a version may take to answer (504 after).
        health: This replica's view of the datacenters (failures are counted there).
        attempt_timeout_s: How long one datacenter may take while another remains to try.
    """

    def __init__(
        self,
        predictors: dict[str | None, DeploymentHandle],
        outcomes: OutcomeSink,
        timeout_s: float,
        health: DatacenterHealth | None = None,
        attempt_timeout_s: float | None = None,
    ):
        self.predictors, self.outcomes, self.timeout_s = predictors, outcomes, timeout_s
        self.health = health or DatacenterHealth()
        self.attempt_timeout_s = attempt_timeout_s or timeout_s
        self._handles: dict[tuple[str | None, str], DeploymentHandle] = {}
        self._background: set[asyncio.Task] = set()  # shadow copies, referenced until done

    async def answer(
        self,
        name: str,
        plan: Plan,
        inputs: np.ndarray,
        rid: str,
        order: tuple[str | None, ...] = SINGLE,
    ) -> Prediction:
        """The answer the client gets. A failure of ``plan.answers`` is answered by the
        fallback, if any (the client never sees a candidate fail); it is reported, and the
        release controller rolls a failing candidate back."""
        reference = None
        if plan.compare_with is not None:
            reference = asyncio.ensure_future(self.call(name, plan.compare_with, inputs, order))
        try:
            result = await self._observed(
                name, plan.answers, inputs, rid, order, compare_to=reference
            )
        except ApiError:
            if plan.fallback is None:
                raise
            logger.warning(
                "v%d of %s failed request %s: v%d answers", plan.answers, name, rid, plan.fallback
            )
            if reference is not None and plan.fallback == plan.compare_with:
                result = await reference
            else:
                result = await self._observed(name, plan.fallback, inputs, rid, order)
        if plan.shadow is not None:
            copy = self._observed(name, plan.shadow, inputs, rid, order, compare_to=result)
            self._in_background(copy)
        return result

    async def call(
        self, name: str, version: int, inputs: np.ndarray, order: tuple[str | None, ...] = SINGLE
    ) -> Prediction:
        """One version's answer (not reported) from the first datacenter of ``order`` that
        gives one, or the ApiError the last failure maps to."""
        mid = model_id(name, version)
        for i, dc in enumerate(order):
            last = i == len(order) - 1
            try:
                result = await asyncio.wait_for(
                    self._handle(dc, mid).predict.remote(inputs),
                    self.timeout_s if last else self.attempt_timeout_s,
                )
            except Exception as err:
                error = upstream_error(err)
                if last or error.status < 500:
                    raise error from None
                if error.code != "overloaded":  # saturated is not failing: no ejection
                    self.health.failed(dc)
                logger.warning("%s in %s (%s): the next datacenter answers", mid, dc, error.code)
                continue
            self.health.succeeded(dc)
            return result
        raise AssertionError("an empty serving order")  # serving_order never returns one

    def _handle(self, dc: str | None, mid: str) -> DeploymentHandle:
        handle = self._handles.get((dc, mid))
        if handle is None:  # one handle per version: options() builds a new one each call
            handle = self.predictors[dc].options(multiplexed_model_id=mid)
            self._handles[(dc, mid)] = handle
        return handle

    async def _observed(
        self,
        name: str,
        version: int,
        inputs: np.ndarray,
        rid: str,
        order: tuple[str | None, ...],
        compare_to: Prediction | Awaitable[Prediction] | None = None,
    ) -> Prediction:
        """``call``, with its outcome reported; given another version's answer (or its
        future), whether the two agree."""
        t0 = time.perf_counter()
        try:
            result = await self.call(name, version, inputs, order)
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
        self.outcomes.record(
            Outcome(name, version, True, latency_ms, agreed, rid, predictions, result.cold)
        )
        return result

    def _in_background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        # Its failure is already reported to the controller; retrieve it so asyncio is quiet.
        task.add_done_callback(
            lambda t: self._background.discard(t) or t.cancelled() or t.exception()
        )
