"""The Open Inference Protocol (v2) as its users call it: Triton's own HTTP client and
KServe's SDK REST client against the deployed model API, with a real trained model, answers
equal to ``/v1 .../predict``.

The kserve SDK pins protobuf < 7, pandas < 3 and psutil < 6, older than what Ray and MLflow
run with in the project's venv, so it lives in a venv of its own (built on first use, ~40 s,
cached under ~/.cache/aimass) and runs ``kserve_probe.py`` there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from models.dataset import dataset_uri, read_manifest


@pytest.fixture(scope="module")
def client(served):
    url = urlparse(served.settings.serve_url)
    with triton.InferenceServerClient(url.netloc, network_timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def rows(served) -> np.ndarray:
    x, _ = read_manifest(dataset_uri(served.settings.storage_root, "digits")).load_split("test")
    return x[:8].reshape(8, -1).astype(np.float32)


def _auth(served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.key}"}


def _v1(served, rows: np.ndarray) -> dict:
    r = httpx.post(
        served.predict_url, json={"instances": rows.tolist()}, headers=_auth(served), timeout=30
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_metadata_through_tritonclient(client, served):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits", headers=_auth(served))
    meta = client.get_model_metadata("digits", headers=_auth(served))
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert str(served.version) in meta["versions"]
    with pytest.raises(InferenceServerException, match="API key"):
        client.get_model_metadata("digits")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_answers_as_predict_does(client, served, rows, binary):
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary)
        for name in ("probabilities", "predictions")
    ]
    result = client.infer("digits", [tensor], outputs=outputs, headers=_auth(served))
    v1 = _v1(served, rows)
    assert result.get_response()["model_version"] == str(v1["version"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), v1["probabilities"], atol=1e-5)
    assert result.as_numpy("predictions").tolist() == v1["predictions"]


def test_a_pinned_version_and_the_protocols_errors(client, served, rows):
    tensor = triton.InferInput("input", [2, 63], "FP32")
    tensor.set_data_from_numpy(rows[:2, :63])
    with pytest.raises(InferenceServerException, match="does not fit") as err:
        client.infer("digits", [tensor], headers=_auth(served))
    assert err.value.status() == "400"
    tensor = triton.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(rows[:2])
    pinned = client.infer(
        "digits", [tensor], model_version=str(served.version), headers=_auth(served)
    )
    assert pinned.get_response()["model_version"] == str(served.version)
    with pytest.raises(InferenceServerException, match="has no version") as err:
        client.infer("digits", [tensor], model_version="999999", headers=_auth(served))
    assert err.value.status() == "404"


KSERVE = "kserve==0.21.0"
PROBE = Path(__file__).with_name("kserve_probe.py")


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """The interpreter of a venv with only the kserve SDK (and what it pins)."""
    venv = Path.home() / ".cache" / "aimass" / f"venv-{KSERVE.replace('==', '-')}"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        env = {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}  # ours: torch
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", KSERVE],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        (venv / ".installed").touch()
    return python


def test_kserve_sdks_rest_client_answers_as_predict_does(kserve_python, served, rows):
    done = subprocess.run(
        [
            str(kserve_python),
            str(PROBE),
            served.settings.serve_url,
            served.key,
            "digits",
            json.dumps(rows.tolist()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    v1 = _v1(served, rows)
    # (kserve 0.21's InferResponse.from_bytes drops the answer's model_version; the answer
    # equal to the champion's /v1 one says which version answered.)
    for mode, binary in (("json", False), ("binary", True)):
        assert seen[mode]["model_name"] == "digits", seen[mode]
        assert seen[mode]["id"] == f"kserve-{binary}", seen[mode]
        np.testing.assert_allclose(seen[mode]["probabilities"], v1["probabilities"], atol=1e-5)
    status, body = seen["wrong_key"]
    assert status == 401 and "API key" in body["error"], seen["wrong_key"]
