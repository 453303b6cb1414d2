"""The proxy's admission limit: excess requests refused at once, with the gateway's error
shape; Serve's health routes never refused (no cluster: the middleware alone)."""

from __future__ import annotations

import asyncio
import json

from serve_apps.admission import Admission


def _scope(path: str, rid: bytes = b"") -> dict:
    headers = [(b"x-request-id", rid)] if rid else []
    return {"type": "http", "path": path, "headers": headers}


async def _call(app: Admission, scope: dict) -> tuple[int, dict, dict]:
    sent = []

    async def send(message) -> None:
        sent.append(message)

    await app(scope, None, send)
    start, body = sent[0], sent[1]
    return start["status"], dict(start["headers"]), json.loads(body["body"] or b"{}")


def test_past_the_limit_requests_are_refused_until_one_finishes(monkeypatch):
    monkeypatch.setattr(Admission, "_count_refusal", lambda self: None)  # a Ray metric
    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        app = Admission(slow_app, max_in_flight=2)
        held = [asyncio.ensure_future(_call(app, _scope("/v1/models"))) for _ in range(2)]
        await asyncio.sleep(0)
        status, headers, body = await _call(app, _scope("/v1/models/x/predict", b"abc-1"))
        assert status == 503 and headers[b"retry-after"] == b"1"
        assert body == {
            "error": "overloaded",
            "detail": "Too many requests in flight.",
            "request_id": "abc-1",
        }
        bad_id = await _call(app, _scope("/v1/models", b"../../etc"))
        assert bad_id[2]["request_id"] != "../../etc"  # never echoed unless safe
        health = asyncio.ensure_future(_call(app, _scope("/-/healthz")))
        await asyncio.sleep(0)
        assert not health.done()  # admitted (it waits on the app like any other)
        release.set()
        assert [s for s, _, _ in await asyncio.gather(*held, health)] == [200, 200, 200]
        assert app.in_flight == 0
        assert (await _call(app, _scope("/v1/models")))[0] == 200

    asyncio.run(scenario())
