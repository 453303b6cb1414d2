"""The Gateway's routes over ASGI, without Ray: the real FastAPI app, the real Gateway
(keys, quotas, routing, body reader, SSE), with in-process stand-ins for what lives in
other processes (Predictor and Generator replicas, the release controller, the rate
limiter actor). Serve would inject the replica as the routes' ``self``; here the replica
context names the instance under test.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from gateway_doubles import (  # tests/unit's own module, on pytest's path
    ROW,
    Generator,
    Predictor,
    post,
)
from ray.exceptions import RaySystemError

from actors.release.routing import Mode, Outcome, Route, in_candidate_share
from serve_apps._private.access import QuotaGate
from serve_apps.gateway import Gateway
from serve_apps.keys import KeyStore, keys_uri

PREDICT, FEEDBACK, GENERATE = (
    "/v1/models/digits/predict",
    "/v1/models/digits/feedback",
    "/v1/models/gpt/generate",
)


def test_a_prediction_names_the_version_and_echoes_the_request_id(client, gateway, key):
    r = post(client, PREDICT, {"instances": [ROW, ROW]}, key, **{"X-Request-ID": "c-1"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 3 and r.json()["predictions"] == [3, 3]
    assert r.json()["request_id"] == "c-1"
    assert [(o.version, o.ok) for o in gateway.releases.outcomes] == [(3, True)]


@pytest.mark.parametrize("path", [PREDICT, FEEDBACK, GENERATE, "/v1/models"])
def test_every_model_route_needs_a_key(client, key, path):
    for headers, status in [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
        ({"Authorization": f"Bearer {key[:-2]}xx"}, 401),
    ]:
        r = client.request("GET" if path == "/v1/models" else "POST", path, headers=headers)
        assert r.status_code == status and r.json()["error"] == "unauthorized", r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_a_revoked_key_is_403(client, settings_env):
    store = KeyStore(keys_uri(settings_env.storage_root), ttl_s=0)
    key, record = store.create("gone")
    store.revoke(record.id)
    r = post(client, PREDICT, {"instances": [ROW]}, key)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"


def test_a_quota_key_gets_429_with_retry_after_past_its_burst(client, settings_env):
    key, _ = KeyStore(keys_uri(settings_env.storage_root)).create("metered", rate=0.5, burst=2)
    statuses = [post(client, PREDICT, {"instances": [ROW]}, key).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    r = post(client, PREDICT, {"instances": [ROW]}, key)
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"] == "rate_limited"


def test_an_unreachable_rate_limiter_fails_quota_keys_closed(client, gateway, settings_env, key):
    metered, _ = KeyStore(keys_uri(settings_env.storage_root)).create("metered", rate=5)

    def unreachable():
        raise RaySystemError("GCS unreachable")

    gateway.quota = QuotaGate(0.1, 1.0, find_limiter=unreachable)
    r = post(client, PREDICT, {"instances": [ROW]}, metered)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert post(client, PREDICT, {"instances": [ROW]}, key).status_code == 200  # no quota


def test_the_key_headers_are_documented_once_per_model_route(client):
    spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for operation in methods.values():
            headers = sorted(
                p["name"] for p in operation.get("parameters", []) if p["in"] == "header"
            )
            # Health, readiness and the OIP server's metadata need no key.
            open_route = path in (
                "/healthz",
                "/readyz",
                "/v2",
                "/v2/health/live",
                "/v2/health/ready",
            )
            assert headers == ([] if open_route else ["authorization", "x-api-key"]), path


def _inside_share(route: Route) -> str:
    return next(c for c in (f"u{i}" for i in range(1000)) if route.sends_to_candidate(c))


def test_a_failing_candidate_is_answered_by_the_champion(client, gateway, key):
    route = Route(3, candidate=4, share=0.5, mode=Mode.CANARY, compare=True, release="r")
    gateway.releases.table["digits"] = route
    gateway.answers.predictors[None].failing.add(4)
    r = post(client, PREDICT, {"instances": [ROW]}, key, **{"X-User-ID": _inside_share(route)})
    assert r.status_code == 200 and r.json()["version"] == 3
    assert [(o.version, o.ok) for o in gateway.releases.outcomes] == [(4, False)]


def test_a_shadow_copy_is_compared_but_never_answers(client, gateway, key):
    route = Route(3, candidate=4, share=1.0, mode=Mode.SHADOW, release="r")
    gateway.releases.table["digits"] = route
    r = post(client, PREDICT, {"instances": [ROW]}, key, **{"X-User-ID": "anyone"})
    assert r.status_code == 200 and r.json()["version"] == 3

    async def shadow_done() -> None:  # the copy runs after the answer, in the background
        while len(gateway.releases.outcomes) < 2:
            await asyncio.sleep(0)

    client.portal.call(asyncio.wait_for, shadow_done(), 5)
    shadow = gateway.releases.outcomes[1]
    assert (shadow.version, shadow.ok, shadow.agreed) == (4, True, False)
    assert in_candidate_share("r", "anyone", 1.0)


def test_feedback_scores_the_version_that_answered(client, key):
    r = post(client, PREDICT, {"instances": [ROW]}, key, **{"X-Request-ID": "fb-1"})
    assert r.status_code == 200
    fb = post(client, FEEDBACK, {"request_id": "fb-1", "labels": [3]}, key)
    assert fb.status_code == 200 and fb.json()["accuracy"] == {"3": 1.0}
    assert post(client, FEEDBACK, {"request_id": "nope", "labels": [3]}, key).status_code == 404


def _events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines.get("event", "message"), json.loads(lines["data"])))
    return events


def test_generation_streams_events_then_done(client, key):
    r = post(client, GENERATE, {"prompt": "Say", "max_new_tokens": 4}, key)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert [d["text"] for kind, d in events if kind == "message"] == ["Hel", "lo"]
    assert events[-1][0] == "done" and events[-1][1]["version"] == 1


def test_a_generation_refused_by_its_replica_is_a_4xx_before_any_event(client, gateway, key):
    r = post(client, GENERATE, {"prompt": "Say", "max_new_tokens": 100_000}, key)
    assert r.status_code == 422 and r.json()["error"] == "invalid_input", r.text
    assert gateway.generator.streams[-1].cancelled


def test_a_generation_failing_midway_ends_with_an_error_event(client, gateway, key):
    gateway.generator.pieces, gateway.generator.error = ["Hel"], RuntimeError("replica died")
    r = post(client, GENERATE, {"prompt": "Say"}, key)
    assert r.status_code == 200
    assert [kind for kind, _ in _events(r.text)] == ["message", "error"]
    assert gateway.generator.streams[-1].cancelled


DEEP = b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}"
LONG_INT = b'{"instances": [[1' + b"0" * 5000 + b"]]}"
# RELIABILITY B9, on each route that reads a body: (case, body per route, status).
PARSER_LIMITS = [
    ("nested thousands deep", {PREDICT: DEEP, FEEDBACK: DEEP, GENERATE: DEEP}, 400),
    (
        "an integer of 5000 digits",
        {
            PREDICT: LONG_INT,
            FEEDBACK: b'{"request_id": "r", "labels": [1' + b"0" * 5000 + b"]}",
            GENERATE: b'{"prompt": "a", "seed": 1' + b"0" * 5000 + b"}",
        },
        400,
    ),
    (
        "a duplicate key",
        {
            PREDICT: b'{"instances": [[1, 1, 1, 1]], "instances": [[2, 2, 2, 2]]}',
            FEEDBACK: b'{"request_id": "r", "labels": [1], "labels": [2]}',
            GENERATE: b'{"prompt": "a", "prompt": "b"}',
        },
        400,
    ),
    (
        "a huge exponent",
        {
            PREDICT: b'{"instances": [[1e999, 1, 1, 1]]}',
            FEEDBACK: b'{"request_id": "r", "labels": [1e999]}',
            GENERATE: b'{"prompt": "a", "temperature": 1e999}',
        },
        422,
    ),
    (
        "a lone surrogate",
        {
            PREDICT: b'{"instances": [["\\ud800", 1, 1, 1]]}',
            FEEDBACK: b'{"request_id": "\\ud800", "labels": [1]}',
            GENERATE: b'{"prompt": "say \\ud800"}',
        },
        422,
    ),
    (
        "a lone surrogate as a key",
        {
            PREDICT: b'{"instances": [[1, 1, 1, 1]], "\\udfff": 1}',
            FEEDBACK: b'{"request_id": "r", "labels": [1], "\\udfff": 1}',
            GENERATE: b'{"prompt": "a", "\\udfff": 1}',
        },
        422,
    ),
]


@pytest.mark.parametrize(
    ("case", "bodies", "status"), PARSER_LIMITS, ids=[case for case, _, _ in PARSER_LIMITS]
)
def test_parser_limits_get_a_short_4xx_on_every_route(client, gateway, key, case, bodies, status):
    for path, body in bodies.items():
        r = post(client, path, body, key)
        assert r.status_code == status, f"{case} on {path}: {r.status_code} {r.text[:300]}"
        detail = r.json()["detail"]
        assert len(detail) < 300 and "Traceback" not in detail
    assert gateway.generator.streams == []  # no bad prompt reached the Generator
    assert post(client, PREDICT, {"instances": [ROW]}, key).status_code == 200


def test_reconfigure_retunes_the_release_client_in_place(settings_env):
    """A new client per reconfigure left the old one's flush task running for good."""
    g = Gateway.func_or_class.__wrapped__(Predictor(), Generator())
    client = g.releases

    async def reconfigured_twice() -> list[asyncio.Task]:
        g.reconfigure({"outcomes_flush_s": 60})
        g.releases.record(Outcome("digits", 3, True, 1.0))  # starts the flush task
        g.reconfigure(
            {
                "outcomes_flush_s": 30,
                "catalog_ttl_s": 5,
                "controller_timeout_s": 2,
                "upstream_timeout_s": 3,
                "rate_lease_s": 0.5,
            }
        )
        g.releases.record(Outcome("digits", 3, True, 1.0))
        flushers = [t for t in asyncio.all_tasks() if "_flush_forever" in repr(t.get_coro())]
        for task in flushers:
            task.cancel()
        return flushers

    assert len(asyncio.run(reconfigured_twice())) == 1
    assert g.releases is client and g.answers.outcomes is client
    assert (client.flush_s, client.routes_ttl_s, client.timeout_s) == (30, 5, 2)
    assert g.answers.timeout_s == 3 and g.config.rate_lease_s == 0.5


def _ready(client, **params):
    import time

    for _ in range(200):  # the first call starts the replica watch; its first read follows
        r = client.get("/readyz", params=params)
        if r.status_code == 200 or r.json().get("detail") != "No Predictor replica runs yet.":
            return r
        time.sleep(0.01)
    return r


def test_readiness_follows_the_served_models_and_the_predictor_replicas(client, gateway):
    r = _ready(client)
    assert r.status_code == 200 and r.json()["models"] == ["digits", "gpt"]
    assert _ready(client, model="digits").status_code == 200
    r = client.get("/readyz", params={"model": "other"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    gateway.answers.health.running = {None: 0}
    gateway.serve_status.running["Predictor"] = 0
    assert client.get("/readyz").status_code == 503
