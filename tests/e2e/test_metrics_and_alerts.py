"""The cluster's Prometheus, seen as an operator sees it (issue: metrics on the dashboard,
alerts, drift): the dashboard reads it, it scrapes every node and our metrics, and shipped
alerts fire for real and resolve: server errors of a broken version, and drifted inputs.

The session cluster's rules are the shipped expressions with test windows (tests/conftest.py:
30 s rate windows, no hold, 5 s scrapes); Ray's metrics agents export every 10 s, so an
alert needs ~20-40 s of errors to fire and the window's length to resolve.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray._common.test_utils import wait_for_condition

from cluster.local import auth_headers
from cluster.monitoring import prometheus
from models import package
from models.dataset import dataset_uri, read_manifest

pytestmark = pytest.mark.skipif(
    prometheus.binary() is None, reason="Prometheus is not installed (`make prometheus`)"
)

ROW = [0.0] * 64
PROBE = "alert-probe"


def _query(settings, promql: str) -> list[dict]:
    reply = httpx.get(f"{prometheus.url(settings)}/api/v1/query", params={"query": promql})
    reply.raise_for_status()
    return reply.json()["data"]["result"]


def _found(settings, name: str, model: str) -> dict | None:
    """Alert ``name`` for ``model`` as Prometheus holds it (pending or firing), or None."""
    for alert in prometheus.firing(settings):
        if alert["labels"]["alertname"] == name and alert["labels"].get("model") == model:
            return alert
    return None


def _alert(settings, name: str, model: str) -> str | None:
    """The state of alert ``name`` for ``model`` (pending, firing), None when it holds none."""
    found = _found(settings, name, model)
    return found["state"] if found else None


def _key(served) -> dict[str, str]:
    return {"X-API-Key": served.key}


def test_the_dashboard_reads_the_prometheus_that_scrapes_every_node(served):
    settings = served.settings
    health = httpx.get(
        f"{settings.dashboard_url}/api/prometheus_health", headers=auth_headers(settings)
    ).json()
    assert health["result"] is True, health
    targets = httpx.get(f"{prometheus.url(settings)}/api/v1/targets").json()["data"]
    assert targets["activeTargets"], "Prometheus found no target in Ray's discovery file"
    assert {t["health"] for t in targets["activeTargets"]} == {"up"}, targets["activeTargets"]
    # The model API's answers, by model and status, as the alert rules read them.
    answer = httpx.post(served.predict_url, json={"instances": [ROW]}, headers=_key(served))
    assert answer.status_code == 200, answer.text
    wait_for_condition(
        lambda: _query(settings, 'ray_aimass_requests_total{model="digits",status="200"}'),
        timeout=60,
        retry_interval_ms=1000,
    )
    # Both sides of AimassReplicasBelowMinimum are real series (Serve's own metrics), and
    # the rule holds nothing while every replica is healthy.
    healthy = _query(settings, "ray_serve_deployment_replica_healthy")
    assert {r["metric"]["deployment"] for r in healthy} >= {"Gateway", "Predictor"}, healthy
    target = _query(settings, 'ray_serve_autoscaling_target_replicas{deployment="Predictor"}')
    assert target, "Serve exports no target for the autoscaled Predictor"
    firing = {a["labels"]["alertname"] for a in prometheus.firing(settings)}
    assert "AimassReplicasBelowMinimum" not in firing


def test_a_failing_version_fires_the_error_rate_alert_and_it_resolves(served, package_factory):
    """The fault: a version whose ONNX file no replica can load (its manifest matches, so
    the registry hands it out); every request to it is a 503 of the model API."""
    settings, registry = served.settings, served.registry
    folder = package_factory("alert-probe")
    (folder / package.ONNX_FILE).write_bytes(b"not an ONNX model")
    package.write_manifest(folder)
    run = registry.client.create_run(registry.experiment(PROBE))
    version = registry.register(PROBE, run.info.run_id, folder).version
    url = f"{settings.serve_url}/v1/models/{PROBE}/versions/{version}/predict"
    headers = _key(served)
    statuses: set[int] = set()
    started = time.monotonic()
    with httpx.Client(timeout=30) as http:
        while _alert(settings, "AimassModelErrorRate", PROBE) != "firing":
            assert time.monotonic() - started < 150, f"not fired; answers {statuses}"
            for _ in range(5):
                statuses.add(http.post(url, json={"instances": [ROW]}, headers=headers).status_code)
            time.sleep(0.5)
    fired_s = time.monotonic() - started
    assert statuses == {503}, statuses
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("aimass")), "alerts"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "AimassModelErrorRate" in shown and "firing" in shown, shown
    # No more errors: once the window holds none, the alert is gone.
    wait_for_condition(
        lambda: _alert(settings, "AimassModelErrorRate", PROBE) is None,
        timeout=settings.alert_window_s + 90,
        retry_interval_ms=1000,
    )
    print(f"fired after {fired_s:.0f} s of errors, resolved {time.monotonic() - started:.0f} s in")


def _drift(settings, version: int) -> float | None:
    found = _query(settings, f'max(ray_aimass_drift_score{{model="digits",version="{version}"}})')
    return float(found[0]["value"][1]) if found else None


def test_shifted_inputs_raise_the_drift_score_past_the_alert_and_back(served):
    """The champion's replicas compare what they serve with the train split's profile that
    ingest recorded; brighter images (every pixel +4) are a drift, the test split is not."""
    settings = served.settings
    manifest = read_manifest(dataset_uri(settings.storage_root, "digits"))
    assert manifest.input_profile is not None, "ingest recorded no profile of the train split"
    rows = np.concatenate([manifest.load_split("test")[0], manifest.load_split("val")[0]])
    shifted = np.clip(rows + 4, 0, 16)
    threshold = settings.drift_alert_psi

    def send_until(inputs: np.ndarray, done, limit_s: float, what: str) -> float:
        started = time.monotonic()
        with httpx.Client(timeout=30) as http:
            while not done():
                assert time.monotonic() - started < limit_s, f"{what}: score {_drift(settings, v)}"
                for batch in np.array_split(inputs, len(inputs) // 64):
                    body = {"instances": batch.tolist()}
                    answer = http.post(served.predict_url, json=body, headers=_key(served))
                    assert answer.status_code == 200, answer.text
                time.sleep(1)
        return time.monotonic() - started

    v = served.registry.resolve("digits@champion").version
    # Earlier tests sent one row over and over (a drift of its own): like training's first.
    calm_s = send_until(rows, lambda: (_drift(settings, v) or 1.0) < threshold, 150, "calm")
    fired: list[dict] = []

    def firing() -> bool:
        found = _found(settings, "AimassInputDrift", "digits")
        if found and found["state"] == "firing":
            fired.append(found)
        return bool(fired)

    drift_s = send_until(shifted, firing, 150, "drift")
    assert float(fired[0]["value"]) > threshold  # the score the rule fired on
    back_s = send_until(
        rows, lambda: _alert(settings, "AimassInputDrift", "digits") is None, 180, "back"
    )
    print(f"drift: calm after {calm_s:.0f} s, fired after {drift_s:.0f} s, gone {back_s:.0f} s")


def test_a_failed_training_run_fires_its_alert(served, submit):
    settings, run = served.settings, f"failing-{time.monotonic_ns()}"
    out = submit("python", "tests/e2e/failing_run.py", run, expect_ok=False)
    assert out.returncode != 0 and "made up by the test" in out.stdout + out.stderr
    # The driver waited until its failure was on its node's metrics page and scraped.
    wait_for_condition(
        lambda: any(
            a["labels"]["alertname"] == "AimassTrainingJobFailed"
            and a["labels"].get("run") == run
            and a["state"] == "firing"
            for a in prometheus.firing(settings)
        ),
        timeout=60,
        retry_interval_ms=1000,
    )
    runs = served.registry.client.search_runs(
        [served.registry.experiment("alert-probe")], f"attributes.run_name = '{run}'"
    )
    assert [r.info.status for r in runs] == ["FAILED"]
