"""Releases over real HTTP: a bad candidate is rolled back with no human action (and the
rollback alert fires), a good one reaches 100 %, and no client request fails during either
switch; a canary none of whose callers is in its share is reported stalled (and alerted);
an operator follows and aborts one with `aimass release`; pinned versions, feedback.

Each release is a real `ray job submit ... -- python -m jobs.release` while a bounded client
load (loopback, a ledger of every request) runs against the gateway.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray._common.test_utils import wait_for_condition
from sklearn.datasets import load_digits

from actors.release.routing import in_candidate_share
from cluster.cli.deploy import wait_for_version
from cluster.monitoring import prometheus
from jobs._private.publish import publish
from models.dataset import dataset_uri, read_manifest
from models.zoo import build_model

DIGITS = load_digits()


def _new_run(served, name: str) -> str:
    registry = served.registry
    return registry.client.create_run(registry.experiment("e2e-release"), run_name=name).info.run_id


def _register_copy_of_champion(served) -> int:
    """A new version with the champion's very package: it agrees with the champion."""
    registry = served.registry
    champion = registry.resolve("digits@champion")
    with tempfile.TemporaryDirectory() as tmp:
        folder = registry.fetch(champion, Path(tmp))
        info = registry.register("digits", _new_run(served, "copy"), folder, tags={"e2e": "good"})
    return info.version


def _register_untrained(served) -> int:
    """A new version of the same shape with random weights: it disagrees with the champion."""
    manifest = read_manifest(dataset_uri(served.settings.storage_root, "digits"))
    info, _ = publish(
        build_model("digits_cnn"),
        "digits_cnn",
        {},
        "digits",
        manifest,
        served.registry,
        _new_run(served, "untrained"),
        tags={"e2e": "bad"},
    )
    return info.version


def _random_digit() -> dict:
    return {"instances": [DIGITS.data[np.random.randint(len(DIGITS.target))].tolist()]}


def _release_under_load(submit, traffic, *flags: str):
    """Submit a release under load (random digits, a new user per request) until the job
    ends; (job, ledger)."""
    new_user = lambda: {"X-User-ID": uuid.uuid4().hex}  # noqa: E731
    with traffic(in_flight=6, body=_random_digit, headers=new_user) as load:
        proc = submit(
            "python",
            "-m",
            "jobs.release",
            "--model",
            "digits",
            "--min-step-s",
            "2",
            "--min-requests",
            "20",
            *flags,
            expect_ok=False,
        )
    return proc, load.ledger


def _failures(ledger: list) -> list:
    return [entry for entry in ledger if entry[1] != 200]


def test_a_bad_candidate_is_rolled_back_by_itself_with_no_failed_request(served, submit, traffic):
    champion = served.registry.resolve("digits@champion").version
    bad = _register_untrained(served)
    proc, ledger = _release_under_load(
        submit, traffic, "--candidate", str(bad), "--steps", "25,100"
    )
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "rollback" in out and "agreement with the champion" in out, out[-3000:]
    assert _failures(ledger) == [] and len(ledger) > 40
    answered = {entry[2] for entry in ledger}  # the versions that answered
    assert bad in answered and champion in answered  # the canary really served traffic
    assert served.registry.resolve("digits@champion").version == champion
    with pytest.raises(Exception, match="candidate"):
        served.registry.resolve("digits@candidate")
    tags = served.registry.client.get_model_version("digits", str(bad)).tags
    assert tags["aimass.release"].startswith("rolled_back")
    wait_for_version(served.settings, served.key, "digits", champion)
    # Operators hear of it: the shipped alert fires (an event: no hold), the first rollback
    # of the model included, whose counter series starts at 1.
    wait_for_condition(
        lambda: _alerting(served, "AimassReleaseRolledBack"), timeout=90, retry_interval_ms=2000
    )


def test_a_good_candidate_reaches_full_traffic_with_no_failed_request(served, submit, traffic):
    before = served.registry.resolve("digits@champion").version
    good = _register_copy_of_champion(served)
    # The first answers of a version include loading it: allow for that in the p95 check.
    proc, ledger = _release_under_load(
        submit,
        traffic,
        "--candidate",
        str(good),
        "--steps",
        "20,50,100",
        "--latency-slack-ms",
        "250",
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert out.count("step: to") == 2 and "promote" in out and "promoted" in out, out[-3000:]
    assert _failures(ledger) == [] and len(ledger) > 60
    assert served.registry.resolve("digits@champion").version == good
    wait_for_version(served.settings, served.key, "digits", good)
    served.registry.promote("digits", before, reason="e2e: restore the session's champion")
    wait_for_version(served.settings, served.key, "digits", before)


def _aimass(*args: str) -> subprocess.CompletedProcess:
    aimass = str(Path(sys.executable).with_name("aimass"))
    return subprocess.run([aimass, *args], capture_output=True, text=True, timeout=180)


def test_an_operator_follows_and_aborts_a_release_with_the_cli(served, submit):
    champion = served.registry.resolve("digits@champion").version
    candidate = _register_copy_of_champion(served)
    flags = ("--candidate", str(candidate), "--mode", "ab", "--weight", "20", "--no-wait")
    started = submit("python", "-m", "jobs.release", "--model", "digits", *flags)
    assert f"ab of v{candidate} against champion v{champion}" in started.stdout
    status = _aimass("release", "status", "digits")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "running" in status.stdout and "A/B split at 20 %" in status.stdout, status.stdout
    aborted = _aimass("release", "abort", "digits", "--reason", "e2e: the split is done")
    out = aborted.stdout
    assert aborted.returncode == 0, out + aborted.stderr
    assert f"v{candidate} rolled back" in out and "e2e: the split is done" in out, out
    again = _aimass("release", "abort", "digits")
    assert again.returncode == 1 and "No release of digits is running" in again.stdout
    assert "aborted" in _aimass("release", "status").stdout
    assert served.registry.resolve("digits@champion").version == champion
    with pytest.raises(Exception, match="candidate"):
        served.registry.resolve("digits@candidate")


def _alerting(served, alert: str) -> bool:
    return any(
        (a["labels"]["alertname"], a["labels"].get("model"), a["state"])
        == (alert, "digits", "firing")
        for a in prometheus.firing(served.settings)
    )


def test_a_canary_whose_callers_are_all_outside_its_share_is_reported_stalled(
    served, submit, traffic
):
    champion = served.registry.resolve("digits@champion").version
    candidate = _register_copy_of_champion(served)
    flags = ("--candidate", str(candidate), "--steps", "5,100", "--min-step-s", "2",
             "--min-requests", "20", "--no-wait")  # fmt: skip
    started = submit("python", "-m", "jobs.release", "--model", "digits", *flags).stdout
    release = re.search(r"\(release ([0-9a-f]+)\)", started).group(1)
    # Callers the sticky split puts on the champion's side, as a few real ones can all be.
    outside = [u for u in (uuid.uuid4().hex for _ in range(100))
               if not in_candidate_share(release, u, 0.05)]  # fmt: skip
    caller = lambda: {"X-User-ID": random.choice(outside)}  # noqa: E731
    try:
        with traffic(in_flight=4, body=_random_digit, headers=caller) as load:
            wait_for_condition(
                lambda: _alerting(served, "AimassReleaseStalled"),
                timeout=120,
                retry_interval_ms=2000,
            )
            status = _aimass("release", "status", "digits").stdout
        assert "stalled" in status and "X-User-ID" in status, status
        assert load.failures() == [] and {e[2] for e in load.ledger} == {champion}
    finally:
        _aimass("release", "abort", "digits", "--reason", "e2e: stalled on purpose")
    # Ended, the release is no longer stalled: the alert resolves.
    wait_for_condition(
        lambda: not _alerting(served, "AimassReleaseStalled"), timeout=120, retry_interval_ms=2000
    )


def _predict(served, url: str, rid: str | None = None, rows: int = 3) -> httpx.Response:
    headers = {"X-API-Key": served.key} | ({"X-Request-ID": rid} if rid else {})
    body = {"instances": DIGITS.data[:rows].tolist()}
    return httpx.post(url, json=body, headers=headers, timeout=30)


def test_a_pinned_version_answers_and_bad_versions_are_refused(served):
    base = f"{served.settings.serve_url}/v1/models/digits/versions"
    r = _predict(served, f"{base}/{served.version}/predict")
    assert r.status_code == 200 and r.json()["version"] == served.version
    assert _predict(served, f"{base}/9999/predict").status_code == 404
    assert _predict(served, f"{base}/0/predict").status_code == 422
    assert _predict(served, f"{base}/one/predict").status_code == 422
    traversal = f"{served.settings.serve_url}/v1/models/..%2F..%2Fetc/versions/1/predict"
    assert _predict(served, traversal).status_code in (404, 422)


def test_feedback_scores_the_version_that_answered(served):
    rid = f"fb-{uuid.uuid4().hex}"
    r = _predict(served, served.predict_url, rid)
    assert r.status_code == 200 and r.json()["request_id"] == rid
    version = r.json()["version"]
    url = f"{served.settings.serve_url}/v1/models/digits/feedback"
    headers = {"X-API-Key": served.key}
    labels = DIGITS.target[:3].tolist()
    # Outcomes reach the controller in batches: poll until this request's has.
    deadline = time.monotonic() + 30
    while (
        fb := httpx.post(
            url, json={"request_id": rid, "labels": labels}, headers=headers, timeout=10
        )
    ).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert fb.status_code == 200, fb.text
    assert fb.json()["accuracy"] == {str(version): 1.0}
    bad = [
        ({"request_id": "never-seen", "labels": [1]}, 404),
        ({"request_id": rid, "labels": [1, 2]}, 422),
        ({"request_id": rid, "labels": [-1, 0, 1]}, 422),
        ({"request_id": "../x", "labels": [1]}, 422),
        ({"request_id": rid}, 422),
    ]
    for body, status in bad:
        got = httpx.post(url, json=body, headers=headers, timeout=10)
        assert got.status_code == status, (body, got.text)
    assert (
        httpx.post(url, json={"request_id": rid, "labels": labels}, timeout=10).status_code == 401
    )
