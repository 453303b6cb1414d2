"""``jobs.pipeline`` submitted as a user does: ingest, train, evaluate as one job, its state
kept on the storage URI, and a resubmission under its name that finds every stage done."""

from __future__ import annotations

import json

import pytest

from cluster import storage
from models.refs import CANDIDATE

pytestmark = pytest.mark.timeout(1800)  # the session's digits model trains first (~4 min)

NAME = "pipeline-e2e"


def test_a_pipeline_runs_its_stages_as_jobs_and_a_resubmission_resumes(served, submit):
    out = submit("python", "-m", "jobs.pipeline", "--config", "digits_smoke", "--name", NAME).stdout
    for stage in ("ingest", "train", "evaluate"):
        assert f"[pipeline] {stage}: -m jobs.{stage} " in out, out[-3000:]
    assert "--set promote=false" in out  # the gates decide what moves, not the train job
    assert "[pipeline] pipeline-e2e finished: digits_pipeline@" in out, out[-3000:]
    state = json.loads(
        storage.read_bytes(storage.join(served.settings.storage_root, "pipelines", f"{NAME}.json"))
    )
    trained = state["records"]["train"]["version"]
    assert [r["status"] for r in state["records"].values()] == ["done"] * 3
    assert served.registry.resolve(f"digits_pipeline@{CANDIDATE}").version == int(
        trained.split("@")[1]
    )  # evaluate's gates passed and set the candidate

    again = submit("python", "-m", "jobs.pipeline", "--config", "digits_smoke", "--name", NAME)
    assert f"[pipeline] {NAME}: every stage finished already ({trained})" in again.stdout
    assert "-m jobs.train" not in again.stdout
