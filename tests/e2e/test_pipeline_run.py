"""``jobs.pipeline`` submitted as a user does: the freshness loop.

The inputs shift (a new scanner: brighter, half the contrast) and labelled data of it
arrives as Parquet files; the drift alert fires and starts the armed ``digits_refresh``
pipeline, which ingests that data, fine-tunes the champion on it, gates the new version
against the champion on it and releases it through a canary judged on the labels clients
feed back, while the live API answers every request; the alert then resolves. Each stage is
a job of its own, the pipeline's state is kept on the storage URI, and a resubmission under
its name finds every stage done (it neither waits for the alert again nor retrains).
"""

from __future__ import annotations

import json
import random
import re
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray._common.test_utils import wait_for_condition
from sklearn.datasets import load_digits

from cluster import storage
from cluster.cli.deploy import wait_for_version
from cluster.monitoring import prometheus

pytestmark = pytest.mark.timeout(1800)  # the session's digits model trains first (~4 min)

REFRESH = "refresh-e2e"


def _firing(settings, alert: str, model: str) -> bool:
    return any(
        (a["labels"]["alertname"], a["labels"].get("model"), a["state"]) == (alert, model, "firing")
        for a in prometheus.firing(settings)
    )


def shifted(pixels: np.ndarray) -> np.ndarray:
    """What the new scanner sends: brighter, with less contrast (pixel counts 0..16)."""
    return np.clip(0.5 * pixels + 7.0, 0, 16).astype(np.float32)


def test_new_data_is_fine_tuned_on_and_released_through_a_canary_with_no_failed_request(
    served, submit, traffic, tmp_path
):
    digits = load_digits()
    x, y = shifted(digits.data), digits.target
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    table = pa.table({"features": x.tolist(), "label": y})
    pq.write_table(table.slice(0, 900), arrived / "part-0.parquet")
    pq.write_table(table.slice(900), arrived / "part-1.parquet")

    def shifted_digit():
        i = random.randrange(len(y))
        return {"instances": [x[i].tolist()]}, [int(y[i])]

    before = served.registry.resolve("digits@champion").version
    feedback = f"{served.settings.serve_url}/v1/models/digits/feedback"
    args = ("--config", "digits_refresh", "--dataset", "digits_shifted", "--source",
            str(arrived), "--name", REFRESH,
            "--on-alert", "AimassInputDrift", "--poll-s", "2")  # fmt: skip
    settings = served.settings
    try:
        # Light, steady traffic all through: ingest and training share the 2 cores with it.
        new_user = lambda: {"X-User-ID": uuid.uuid4().hex}  # noqa: E731  (canaries are per user)
        with traffic(
            in_flight=2,
            pause_s=0.05,
            body=shifted_digit,
            headers=new_user,
            feedback_url=feedback,
            limit_s=1500,
        ) as load:
            out = submit("python", "-m", "jobs.pipeline", *args, expect_ok=False).stdout
            # The new champion learned the new data: its inputs are not a drift, and the old
            # version, idle, withdraws its score.
            wait_for_condition(
                lambda: not _firing(settings, "AimassInputDrift", "digits"),
                timeout=180,
                retry_interval_ms=2000,
            )
        armed = out.index("[pipeline] armed: waiting for AimassInputDrift on digits")
        assert (
            armed
            < out.index("[pipeline] AimassInputDrift fired on digits: ")
            < out.index("[pipeline] ingest: ")
        ), out[-4000:]  # the drift started the pipeline
        assert "[pipeline] refresh-e2e finished: digits@" in out, out[-4000:]
        new = int(out.split("[pipeline] refresh-e2e finished: digits@")[1].split()[0])
        for stage in ("ingest", "train", "evaluate", "release"):
            assert f"[pipeline] {stage}: -m jobs.{stage} " in out, out[-4000:]
        assert f"--source {arrived}" in out and "--from digits@champion" in out
        assert "promoted" in out, out[-4000:]
        gate = re.search(r"gate accuracy vs champion: ([\d.]+) >= ([\d.]+) passed", out)
        assert gate, out[-4000:]
        refreshed, champion = float(gate.group(1)), float(gate.group(2)) + 0.005  # the drop allowed
        print(f"refresh: on the new data {refreshed:.3f} against the champion's {champion:.3f}")
        assert refreshed > champion  # the new data is what the champion had gone stale on

        assert load.failures() == [], load.failures()[:5]
        answered = {entry[2] for entry in load.ledger}
        assert before in answered and new in answered, answered  # the canary served traffic
        assert load.fed_back >= 50 and load.feedback_refused == [], load.feedback_refused[:3]
        assert served.registry.resolve("digits@champion").version == new
        assert served.registry.get("digits", new).parent == f"digits@{before}"
        print(f"refresh: {len(load.ledger)} requests, {load.fed_back} labels fed back")

        assert "--set promote=false" in out  # the gates decide what moves, not the train job
        state = json.loads(
            storage.read_bytes(storage.join(settings.storage_root, "pipelines", f"{REFRESH}.json"))
        )
        assert [(s, r["status"]) for s, r in state["records"].items()] == [
            (stage, "done") for stage in ("ingest", "train", "evaluate", "release")
        ], state
        again = submit("python", "-m", "jobs.pipeline", *args).stdout
        assert f"[pipeline] {REFRESH}: every stage finished already (digits@{new})" in again, again
        assert "armed" not in again and "-m jobs.train" not in again, again
    finally:  # the modules after this one expect the session's champion
        if served.registry.resolve("digits@champion").version != before:
            served.registry.promote("digits", before, reason="e2e: restore the session's champion")
        wait_for_version(served.settings, served.key, "digits", before)
