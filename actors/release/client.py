"""The gateway's side of the release controller: routes, signatures and outcomes.

Every gateway replica keeps the controller's routing table for ``routes_ttl_s`` (a promotion
or rollback reaches it within that), version signatures for good (versions never change),
and sends answer outcomes in one batch every ``outcomes_flush_s``: never a round trip per
request. If the controller cannot be reached the replica keeps serving from its last table
(ActorUnavailable only before it ever got one) and drops outcomes rather than queueing
them unbounded.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray.exceptions import RayError

from actors.exceptions import ActorUnavailable
from actors.release.controller import CONTROLLER_NAME, controller_actor
from actors.release.routing import Outcome, Route
from models.exceptions import ModelNotFound

logger = logging.getLogger("ray.serve")
_MAX_BUFFERED = 50_000  # outcomes kept while the controller is away


class ReleaseClient:
    def __init__(self, routes_ttl_s: float, flush_s: float, timeout_s: float) -> None:
        self.reconfigure(routes_ttl_s, flush_s, timeout_s)
        self._actor = None
        self._routes: dict[str, Route] | None = None
        self._routes_at = float("-inf")
        self._signatures: dict[tuple[str, int], dict] = {}
        self._outcomes: list[Outcome] = []
        self._flusher: asyncio.Task | None = None

    def reconfigure(self, routes_ttl_s: float, flush_s: float, timeout_s: float) -> None:
        """New timings, taking effect at the next call and flush. Retune a client in place
        rather than replacing it: a new one would leave the old one's flush task running
        for good (its outcomes flushed on the old period, the task never collected)."""
        self.routes_ttl_s, self.flush_s, self.timeout_s = routes_ttl_s, flush_s, timeout_s

    async def _controller(self):
        if self._actor is None:  # a GCS lookup (or the actor's creation): off the event loop
            self._actor = await asyncio.to_thread(controller_actor)
        return self._actor

    async def _call(self, method: str, *args):
        try:
            actor = await self._controller()
            return await asyncio.wait_for(getattr(actor, method).remote(*args), self.timeout_s)
        except (RayError, TimeoutError):
            self._actor = None  # look it up again next time: it may have been restarted
            raise

    async def routes(self) -> dict[str, Route]:
        """Per served model: champion, and the running release's candidate and share."""
        if time.monotonic() - self._routes_at > self.routes_ttl_s:
            try:
                self._routes = await self._call("routes")
                self._routes_at = time.monotonic()
            except (RayError, TimeoutError) as err:
                if self._routes is None:
                    raise ActorUnavailable(
                        "No routing table yet: the release controller is unreachable.",
                        CONTROLLER_NAME,
                    ) from None
                logger.warning("release controller unreachable (%s): serving last routes", err)
        return self._routes

    async def signature(self, model: str, version: int) -> dict:
        """{"signature": ..., "task": ...} of a version; ModelNotFound if there is none."""
        key = (model, version)
        if key not in self._signatures:
            try:
                self._signatures[key] = await self._call("signature", model, version)
            except ModelNotFound:
                raise
            except (RayError, TimeoutError):
                raise ActorUnavailable(
                    f"Cannot read the signature of {model} v{version}: the release "
                    "controller is unreachable.",
                    CONTROLLER_NAME,
                ) from None
        return self._signatures[key]

    async def feedback(self, model: str, request_id: str, labels: list[int]) -> dict:
        return await self._call("feedback", model, request_id, labels)

    def record(self, outcome: Outcome) -> None:
        if len(self._outcomes) < _MAX_BUFFERED:
            self._outcomes.append(outcome)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def flush(self) -> None:
        batch, self._outcomes = self._outcomes, []
        if batch:
            try:
                await self._call("record", batch)
            except (RayError, TimeoutError) as err:
                logger.warning(
                    "dropped %d outcomes: release controller unreachable (%s)", len(batch), err
                )

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()
