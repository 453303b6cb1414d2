"""The Open Inference Protocol (v2) routes over ASGI, without Ray: the real Gateway with
in-process stand-ins (``gateway_doubles``). The real clients (tritonclient, over HTTP)
drive the deployed model API in tests/e2e/test_model_api.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gateway_doubles import ROW, WIDTH, post

from actors.release.routing import Mode, Route
from serve_apps._private.oip import INFER_HEADER

INFER = "/v2/models/digits/infer"


def _infer(client, key, body: dict, path: str = INFER, binary: bytes = b"", **headers):
    header = json.dumps(body).encode()
    if binary:
        headers[INFER_HEADER] = str(len(header))
    return post(client, path, header + binary, key, **headers)


def _tensor(rows: list[list[float]], **extra) -> dict:
    return {"name": "input", "shape": [len(rows), WIDTH], "datatype": "FP32", **extra}


def test_health_and_server_metadata_need_no_key(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


def test_model_metadata_comes_from_the_signature(client, gateway, key):
    gateway.releases.table["digits"] = Route(3, candidate=4, share=0.1, mode=Mode.CANARY)
    meta = client.get("/v2/models/digits", headers={"X-API-Key": key}).json()
    assert meta["versions"] == ["3", "4"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, WIDTH]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "predictions"]
    pinned = client.get("/v2/models/digits/versions/4", headers={"X-API-Key": key}).json()
    assert pinned["versions"] == ["4"]
    ready = client.get("/v2/models/digits/versions/4/ready", headers={"X-API-Key": key})
    assert ready.json() == {"name": "digits", "ready": True}


def test_json_infer_answers_as_predict_does(client, gateway, key):
    body = {"id": "c-7", "inputs": [_tensor([ROW, ROW], data=ROW + ROW)]}
    r = _infer(client, key, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == "digits" and answer["model_version"] == "3"
    assert answer["id"] == "c-7"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["predictions"] == {
        "name": "predictions",
        "datatype": "INT64",
        "shape": [2],
        "data": [3, 3],
    }
    assert outputs["probabilities"]["shape"] == [2, 10]
    v1 = post(client, "/v1/models/digits/predict", {"instances": [ROW, ROW]}, key).json()
    proba = np.asarray(outputs["probabilities"]["data"]).reshape(2, 10)
    np.testing.assert_allclose(proba, v1["probabilities"], atol=1e-6)
    assert [(o.version, o.ok) for o in gateway.releases.outcomes] == [(3, True), (3, True)]


def test_binary_tensors_in_and_out(client, key):
    rows = np.asarray([ROW, [2.0] * WIDTH], dtype=np.float64)
    raw = rows.astype("<f8").tobytes()
    tensor = {"name": "input", "shape": [2, WIDTH], "datatype": "FP64"}
    tensor["parameters"] = {"binary_data_size": len(raw)}
    body = {
        "inputs": [tensor],
        "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}],
    }
    r = _infer(client, key, body, binary=raw)
    assert r.status_code == 200, r.text
    n = int(r.headers[INFER_HEADER])
    header = json.loads(r.content[:n])
    assert header["outputs"] == [
        {
            "name": "predictions",
            "datatype": "INT64",
            "shape": [2],
            "parameters": {"binary_data_size": 16},
        }
    ]
    assert np.frombuffer(r.content[n:], dtype="<i8").tolist() == [3, 3]


def test_a_pinned_version_answers(client, key):
    r = _infer(
        client, key, {"inputs": [_tensor([ROW], data=ROW)]}, "/v2/models/digits/versions/4/infer"
    )
    assert r.status_code == 200 and r.json()["model_version"] == "4"
    named = {"model_name": "digits", "model_version": "4", "inputs": [_tensor([ROW], data=ROW)]}
    r = _infer(client, key, named, "/v2/models/digits/versions/4/infer")
    assert r.status_code == 200 and r.json()["model_version"] == "4"


@pytest.mark.parametrize(
    ("body", "binary", "status", "quoted"),
    [
        ({"inputs": [_tensor([ROW], data=ROW[:-1])]}, b"", 400, "values for shape"),
        ({"inputs": [{**_tensor([ROW], data=ROW), "name": "x"}]}, b"", 400, "one input"),
        ({"inputs": [{**_tensor([ROW], data=ROW), "datatype": "BYTES"}]}, b"", 400, "Datatype"),
        (
            {"inputs": [{**_tensor([ROW], data=ROW), "shape": [1, WIDTH + 1]}]},
            b"",
            400,
            "does not fit",
        ),
        ({"inputs": [_tensor([ROW], data=["a"] * WIDTH)]}, b"", 400, "must be numbers"),
        ({"inputs": [_tensor([ROW], data=[float("nan")] * WIDTH)]}, b"", 400, "finite"),
        ({"inputs": [_tensor([ROW])]}, b"", 400, "neither data"),
        (
            {"inputs": [_tensor([ROW], parameters={"binary_data_size": 3})]},
            b"abc",
            400,
            "binary_data_size",
        ),
        (
            {"inputs": [_tensor([ROW], data=ROW)], "outputs": [{"name": "logits"}]},
            b"",
            400,
            "No output",
        ),
        ({"inputs": []}, b"", 422, "inputs"),
        # KServe's SDK names the model (and a version) in the body: they must fit the path
        ({"model_name": "other", "inputs": [_tensor([ROW], data=ROW)]}, b"", 400, "model_name"),
        ({"model_version": "4", "inputs": [_tensor([ROW], data=ROW)]}, b"", 400, "versions/4"),
        ({"inputs": [_tensor([ROW], data=ROW)], "extra": 1}, b"", 422, "extra"),
    ],
)
def test_a_bad_inference_request_gets_the_protocols_error_shape(
    client, key, body, binary, status, quoted
):
    r = _infer(client, key, body, binary=binary)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and quoted in r.json()["error"], r.text


def test_keys_and_unknown_models_answer_in_the_protocols_shape(client, key):
    body = {"inputs": [_tensor([ROW], data=ROW)]}
    for path, given, status in [
        (INFER, None, 401),
        (INFER, "wrong", 401),
        ("/v2/models/nope/infer", key, 404),
        ("/v2/models/gpt/infer", key, 422),  # a language model
        ("/v2/models/digits/versions/x/infer", key, 422),
        ("/v2/models/digits/versions/9/infer", key, 404),
    ]:
        r = _infer(client, given, body, path)
        assert r.status_code == status and list(r.json()) == ["error"], (path, r.text)
    assert client.get("/v2/nothing").json() == {"error": "Not Found"}


def test_a_compressed_or_oversized_body_is_refused_before_it_is_read(client, gateway, key):
    body = {"inputs": [_tensor([ROW], data=ROW)]}
    assert _infer(client, key, body, **{"Content-Encoding": "gzip"}).status_code == 415
    gateway.config = gateway.config.model_copy(update={"max_body_bytes": 16})
    assert _infer(client, key, body).status_code == 413


def test_a_lying_header_length_is_a_bad_request(client, key):
    r = _infer(client, key, {"inputs": [_tensor([ROW], data=ROW)]}, **{INFER_HEADER: "99999"})
    assert r.status_code == 400 and INFER_HEADER in r.json()["error"]
