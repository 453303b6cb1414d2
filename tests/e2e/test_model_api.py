"""What a client of the model API sees, over real HTTP, with a real trained model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest
from ray._common.test_utils import wait_for_condition

from cluster.cli.deploy import wait_for_version
from cluster.cli.query import query_split
from models.dataset import dataset_uri, read_manifest
from models.refs import CHAMPION
from serve_apps.keys import KeyStore, keys_uri

ROW = ",".join(["3"] * 64)


def post(url, body, key=None, content_type="application/json", **headers):
    if key:
        headers["X-API-Key"] = key
    if content_type:
        headers["Content-Type"] = content_type
    return httpx.post(url, content=body, headers=headers, timeout=30)


def test_served_accuracy_on_the_held_out_split(served):
    manifest = read_manifest(dataset_uri(served.settings.storage_root, "digits"))
    x, y = manifest.load_split("test")
    result = query_split(served.settings.serve_url, served.key, "digits", x, y)
    assert result.total == 360 and result.versions == (served.version,)
    assert result.accuracy >= 0.97


def test_answer_names_the_version_and_echoes_the_request_id(served):
    r = post(
        served.predict_url,
        f'{{"instances": [[{ROW}], [{ROW}]]}}',
        served.key,
        **{"X-Request-ID": "client-42"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == served.version and len(body["predictions"]) == 2
    assert all(abs(sum(p) - 1) < 1e-3 for p in body["probabilities"])
    assert r.headers["X-Request-ID"] == "client-42"


def test_model_list_needs_a_key_and_names_the_champion(served):
    url = f"{served.settings.serve_url}/v1/models"
    assert httpx.get(url, timeout=10).status_code == 401
    r = httpx.get(url, headers={"Authorization": f"Bearer {served.key}"}, timeout=10)
    assert r.json()["models"] == [
        {
            "name": "digits",
            "version": served.version,
            "alias": CHAMPION,
            "input_shape": [64],
            "num_classes": 10,
        }
    ]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
        ({"X-API-Key": "amk_000000000000_" + "A" * 43}, 401),
    ],
)
def test_requests_without_a_valid_key_are_refused(served, headers, status):
    r = httpx.post(served.predict_url, json={"instances": [[0] * 64]}, headers=headers, timeout=10)
    assert r.status_code == status
    assert r.json()["error"] == "unauthorized" and "Traceback" not in r.text


def test_a_revoked_key_is_refused_by_the_running_gateway(served):
    store = KeyStore(keys_uri(served.settings.storage_root))
    key, record = store.create("short-lived")
    body = f'{{"instances": [[{ROW}]]}}'

    def steadily(status: int) -> bool:
        # Several in a row: each of the gateway replicas answers from its own key cache.
        return all(post(served.predict_url, body, key).status_code == status for _ in range(6))

    # A new key is seen within a fraction of a second on an idle box (misses re-read at most
    # 4x/s per gateway replica); the timeout leaves room for a loaded CI machine.
    wait_for_condition(lambda: steadily(200), timeout=30)
    store.revoke(record.id)
    # S3: the store the CLI wrote, and the revoke rewrote, is its owner's alone.
    assert Path(store.uri).stat().st_mode & 0o777 == 0o600
    # Every replica refuses it once its cache entry expires (TTL 2 s): 403, revoked.
    wait_for_condition(lambda: steadily(403), timeout=30)


DEEP = "[" * 5000 + "]" * 5000
BIG = b'{"instances": [[' + b",".join([b"1"] * 64) + b"]]" + b" " * (1 << 20) + b"}"
BAD_BODIES = [
    ("wrong shape", f'{{"instances": [[{ROW},1]]}}', "application/json", 422),
    ("NaN", '{"instances": [[' + ",".join(["NaN"] * 64) + "]]}", "application/json", 422),
    ("Infinity", '{"instances": [[' + ",".join(["Infinity"] * 64) + "]]}", "application/json", 422),
    ("strings", '{"instances": [[' + ",".join(['"1"'] * 64) + "]]}", "application/json", 422),
    ("empty batch", '{"instances": []}', "application/json", 422),
    (
        "oversized batch",
        '{"instances": [' + ",".join([f"[{ROW}]"] * 257) + "]}",
        "application/json",
        422,
    ),
    ("extra field", f'{{"instances": [[{ROW}]], "x": 1}}', "application/json", 422),
    ("malformed JSON", '{"instances": [[1, 2', "application/json", 400),
    ("wrong content type", f'{{"instances": [[{ROW}]]}}', "text/plain", 415),
    ("no content type", f'{{"instances": [[{ROW}]]}}', None, 415),
    ("empty body", "", "application/json", 422),
    ("body over the cap", BIG, "application/json", 413),
    # B9: the JSON parser's limits
    ("nested 5000 deep", '{"instances": ' + DEEP + "}", "application/json", 400),
    (
        "an integer of 5000 digits",
        '{"instances": [[1' + "0" * 5000 + "]]}",
        "application/json",
        400,
    ),
    (
        "a duplicate key",
        f'{{"instances": [[{ROW}]], "instances": [[{ROW}]]}}',
        "application/json",
        400,
    ),
    (
        "a huge exponent",
        '{"instances": [[' + ",".join(["1e999"] * 64) + "]]}",
        "application/json",
        422,
    ),
    ("a lone surrogate", '{"instances": [["\\ud800"' + ",1" * 63 + "]]}", "application/json", 422),
    ("a lone surrogate key", f'{{"instances": [[{ROW}]], "\\udfff": 1}}', "application/json", 422),
    ("raw surrogate bytes", b'{"instances": [["\xed\xa0\x80"]]}', "application/json", 422),
]


@pytest.mark.parametrize(("case", "body", "content_type", "status"), BAD_BODIES)
def test_bad_bodies_get_a_short_4xx(served, case, body, content_type, status):
    r = post(served.predict_url, body, served.key, content_type)
    assert r.status_code == status, f"{case}: {r.status_code} {r.text[:300]}"
    detail = r.json()["detail"]
    assert len(detail) < 400 and "Traceback" not in detail


FEEDBACK_PARSER_LIMITS = [
    ('{"request_id": "r", "labels": ' + DEEP + "}", 400),
    ('{"request_id": "r", "labels": [1' + "0" * 5000 + "]}", 400),
    ('{"request_id": "r", "labels": [1], "labels": [2]}', 400),
    ('{"request_id": "r", "labels": [1e999]}', 422),
    ('{"request_id": "\\ud800", "labels": [1]}', 422),
]


def test_feedback_bodies_past_the_parser_limits_get_a_short_4xx(served):
    url = f"{served.settings.serve_url}/v1/models/digits/feedback"
    for body, status in FEEDBACK_PARSER_LIMITS:
        r = post(url, body, served.key)
        assert r.status_code == status, f"{body[:60]}: {r.status_code} {r.text[:300]}"
        assert len(r.json()["detail"]) < 400 and "Traceback" not in r.text
    assert httpx.get(f"{served.settings.serve_url}/healthz", timeout=10).status_code == 200


def test_body_over_the_cap_without_content_length_gets_413(served):
    def chunks():  # a generator body is sent chunked, with no Content-Length
        for i in range(0, len(BIG), 65536):
            yield BIG[i : i + 65536]

    headers = {"X-API-Key": served.key, "Content-Type": "application/json"}
    r = httpx.post(served.predict_url, content=chunks(), headers=headers, timeout=30)
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("name", "status"),
    [("..%2F..%2Fetc", 404), ("file:etc", 422), ("http:x", 422), ("nosuch", 404)],
)
def test_unsafe_or_unknown_model_names(served, name, status):
    url = f"{served.settings.serve_url}/v1/models/{name}/predict"
    r = post(url, f'{{"instances": [[{ROW}]]}}', served.key)
    assert r.status_code == status, r.text


def test_service_stays_healthy_after_bad_input(served):
    for _, body, content_type, _ in BAD_BODIES:
        post(served.predict_url, body, served.key, content_type)
    assert httpx.get(f"{served.settings.serve_url}/healthz", timeout=10).status_code == 200
    assert post(served.predict_url, f'{{"instances": [[{ROW}]]}}', served.key).status_code == 200


def test_openapi_documents_the_routes(served):
    spec = httpx.get(f"{served.settings.serve_url}/openapi.json", timeout=10).json()
    assert "/v1/models/{name}/predict" in spec["paths"] and "/v1/models" in spec["paths"]
    for path, methods in spec["paths"].items():
        if path.startswith("/v1/"):  # the key headers, on every model route
            for operation in methods.values():
                headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
                assert headers == {"authorization", "x-api-key"}, (path, headers)


def test_moving_the_champion_alias_is_served_without_a_redeploy(served):
    """Promote a new version (a re-registration of the same package) and watch it serve."""
    registry = served.registry
    current = registry.resolve("digits@champion")
    with tempfile.TemporaryDirectory() as tmp:
        folder = registry.fetch(current, Path(tmp))
        new = registry.register("digits", current.run_id, folder, tags={"e2e": "promotion"})
    registry.set_alias("digits", CHAMPION, new.version)
    try:
        wait_for_version(served.settings, served.key, "digits", new.version, timeout_s=60)
        r = post(served.predict_url, f'{{"instances": [[{ROW}]]}}', served.key)
        assert r.json()["version"] == new.version
    finally:
        registry.set_alias("digits", CHAMPION, current.version)


def test_serve_http_listens_on_loopback_only(served):
    import psutil

    listening = {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == served.settings.serve_port
    }
    assert listening and listening <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
