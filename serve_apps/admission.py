"""Overload shedding at the door: the first middleware of Serve's HTTP proxy.

Past capacity, what decides latency is how cheaply the excess is refused: each refusal the
proxy routes (request id, routing, the router's queue check, access log) costs it nearly
as much CPU as a request it forwards, so on a small machine at 2x capacity its own backlog
grew to seconds and refusals came back as late as answers. Here, before any of that, a
request past ``proxy_max_in_flight`` requests in flight through this proxy gets a
503 with ``Retry-After`` and the gateway's JSON error body, in microseconds of Python.

Serve loads it in each proxy through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
(``cluster.local.PROXY_CALLBACK``), set where the cluster starts.
Serve's own health routes (``/-/...``) are never refused.
"""

from __future__ import annotations

import json

from starlette.middleware import Middleware

from cluster.settings import get_settings
from serve_apps._private.http import safe_request_id

RETRY_AFTER_S = 1


class Admission:
    """Pure ASGI: count the requests in flight; refuse at once past the limit."""

    def __init__(self, app, max_in_flight: int) -> None:
        self.app, self.max_in_flight, self.in_flight = app, max_in_flight, 0
        self._refused = None  # the metric, made on first refusal (inside the proxy actor)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/-/"):
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            return await self._refuse(scope, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, scope, send) -> None:
        rid = safe_request_id(dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1"))
        body = json.dumps(
            {"error": "overloaded", "detail": "Too many requests in flight.", "request_id": rid}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
            (b"x-request-id", rid.encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._count_refusal()

    def _count_refusal(self) -> None:
        if self._refused is None:
            from ray.util.metrics import Counter

            self._refused = Counter(
                "aimass_proxy_refusals",
                description="Requests refused by the HTTP proxy's admission limit (503).",
            )
        self._refused.inc()


def middlewares() -> list[Middleware]:
    """The proxy callback Serve calls (see the module's docstring)."""
    return [Middleware(Admission, max_in_flight=get_settings().proxy_max_in_flight)]
