"""The GPT language model through jobs.train: a worker killed at a random step, a run that
fails for good and is resubmitted under its name, each resuming from its last checkpoint;
then evaluated, and served: text streamed over HTTP as server-sent events.

Pass or fail comes from the job's own step lines ("[train] step N/T ...") and its status,
never from timing.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal

import httpx
import pytest
from ray._common.test_utils import wait_for_condition
from ray.job_submission import JobStatus, JobSubmissionClient

from cluster import storage
from cluster.cli.deploy import wait_for_version
from cluster.settings import Settings
from models.dataset import dataset_uri, read_manifest
from models.registry import Registry

RUN = "lm-faults"
CHECKPOINT_MANAGER_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train v2's own file
EPOCHS = 3
# Worker lines carry Ray's "(RayTrainWorker pid=N)" prefix: a killed attempt's last lines
# may reach the log after the next attempt's first ones, so lines are told apart by pid.
STEP = re.compile(r"pid=(\d+)\)\s*\[train\] step (\d+)/(\d+)")
WORKER = re.compile(r"\[train\] worker rank (\d+)/\d+ pid (\d+)")
RESUMED = re.compile(
    r"pid=(\d+)\)\s*\[train\] resumed from the checkpoint of epoch (\d+)/\d+, step (\d+)"
)
CANCELLED = re.compile(r"generation from gpt:\d+ cancelled after (\d+) tokens")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Job:
    """A submitted job and what its log says so far."""

    def __init__(self, client: JobSubmissionClient, job_id: str) -> None:
        self.client, self.id = client, job_id

    @property
    def log(self) -> str:
        return ANSI.sub("", self.client.get_job_logs(self.id))

    @property
    def status(self) -> JobStatus:
        return self.client.get_job_status(self.id)

    def steps(self, pid: int | None = None) -> list[int]:
        """Steps logged (by rank 0), optionally only by the process ``pid``."""
        found = ((int(m.group(1)), int(m.group(2))) for m in STEP.finditer(self.log))
        return [step for p, step in found if pid is None or p == pid]

    def worker_pid(self, rank: int, attempt: int = -1) -> int:
        pids = [int(m.group(2)) for m in WORKER.finditer(self.log) if int(m.group(1)) == rank]
        return pids[attempt]

    def wait(self, timeout: float = 600) -> JobStatus:
        done = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)
        wait_for_condition(lambda: self.status in done, timeout=timeout, retry_interval_ms=1000)
        return self.status


@pytest.fixture(scope="module")
def lm_data(submit) -> int:
    """A small slice of the standard library as byte tokens; returns steps per epoch."""
    out = submit(
        "python", "-m", "jobs.ingest", "--dataset", "python_stdlib", "--max-bytes", "300000"
    ).stdout
    assert "[ingest] train:" in out
    rows = read_manifest(dataset_uri(Settings().storage_root, "python_stdlib")).rows("train")
    return rows // 2 // 16  # 2 workers, batch 16, drop_last


SUBMITTED: list[Job] = []


@pytest.fixture(autouse=True, scope="module")
def _stop_leftover_jobs():
    """A failed test must not leave its training job burning the CPUs of later tests."""
    yield
    for job in SUBMITTED:
        if job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            job.client.stop_job(job.id)


def train(local_cluster: Settings, repo_root, *overrides: str) -> Job:
    client = JobSubmissionClient(local_cluster.dashboard_url)
    sets = [f"--set={pair}" for pair in (f"epochs={EPOCHS}", "log_every=1", *overrides)]
    entrypoint = f"python -m jobs.train --config gpt_tiny --name {RUN} " + " ".join(sets)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(repo_root)})
    SUBMITTED.append(Job(client, job_id))
    return SUBMITTED[-1]


def registered_checkpoints(settings: Settings) -> int:
    """How many checkpoints Ray Train's controller has registered for the run (its snapshot).

    A worker's report reaches the controller when it next polls the workers: a worker killed
    right after reporting can take its checkpoint with it, so kills wait for this."""
    uri = storage.join(settings.storage_root, "ray_train", RUN, CHECKPOINT_MANAGER_SNAPSHOT)
    if not storage.exists(uri):
        return 0
    return len(json.loads(storage.read_bytes(uri)).get("checkpoint_results", []))


def kill_worker_after(job: Job, step: int, pid: int | None = None, checkpoints: int = 0) -> None:
    """SIGKILL the latest rank 1 process once (``pid``'s) rank 0 has logged ``step`` and the
    controller holds ``checkpoints`` checkpoints."""
    wait_for_condition(lambda: max(job.steps(pid), default=0) >= step, timeout=300)
    wait_for_condition(lambda: registered_checkpoints(Settings()) >= checkpoints, timeout=120)
    os.kill(job.worker_pid(1), signal.SIGKILL)


def first_step_after_resume(job: Job) -> tuple[int, int, int]:
    """(checkpoint step, first step the resumed rank 0 logged, its pid), once it has."""
    wait_for_condition(lambda: RESUMED.search(job.log), timeout=300)
    resumed = RESUMED.search(job.log)
    pid = int(resumed.group(1))
    wait_for_condition(lambda: job.steps(pid), timeout=300)
    return int(resumed.group(3)), job.steps(pid)[0], pid


def test_killed_worker_and_resubmitted_run_resume_from_their_checkpoints(
    local_cluster: Settings, repo_root, lm_data: int
):
    steps_per_epoch, total = lm_data, lm_data * EPOCHS
    rng = random.Random()
    # max_failures=1: the first kill is survived (Ray Train restarts the worker group), the
    # second ends the job, which a resubmission under the same name must pick up.
    job = train(local_cluster, repo_root, "max_failures=1")
    kill_at = rng.randint(steps_per_epoch + 2, 2 * steps_per_epoch - 2)  # after 1st checkpoint
    kill_worker_after(job, kill_at, checkpoints=1)
    checkpoint_step, first, pid = first_step_after_resume(job)
    assert checkpoint_step == steps_per_epoch
    assert first == checkpoint_step + 1

    # Kill again, after the restart: no failures left, the run ends FAILED.
    wait_for_condition(lambda: len(WORKER.findall(job.log)) == 4, timeout=300)
    kill_worker_after(job, first + 2, pid)
    assert job.wait() == JobStatus.FAILED

    again = train(local_cluster, repo_root)
    checkpoint_step, first, _ = first_step_after_resume(again)
    assert checkpoint_step % steps_per_epoch == 0 and checkpoint_step >= steps_per_epoch
    assert first == checkpoint_step + 1
    assert again.wait() == JobStatus.SUCCEEDED, again.log[-3000:]
    assert max(again.steps()) == total
    assert re.search(r"\[train\] registered gpt version \d+; test loss", again.log)

    registry = Registry.from_settings(local_cluster)
    assert registry.client.search_model_versions("name='gpt'")


def test_evaluate_measures_a_language_model_by_loss_and_perplexity(submit, local_cluster):
    registry = Registry.from_settings(local_cluster)
    versions = registry.client.search_model_versions("name='gpt'")
    assert versions, "needs the version the training test registered"
    latest = max(int(v.version) for v in versions)
    out = submit("python", "-m", "jobs.evaluate", "--model", f"gpt@{latest}").stdout
    loss = float(re.search(r"\[evaluate\]\s+loss\s+([\d.]+)", out).group(1))
    perplexity = float(re.search(r"\[evaluate\]\s+perplexity\s+([\d.]+)", out).group(1))
    assert 0 < loss < 5.55  # better than a uniform guess over 256 bytes
    assert perplexity == pytest.approx(math.exp(loss), rel=1e-3)
    assert "gate loss:" in out


def _events(response) -> list[tuple[str, dict]]:
    """(event, data) pairs of a server-sent event stream, as they arrive."""
    events, kind = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: ") :])))
            kind = "message"
    return events


def test_the_trained_model_generates_text_over_http_as_server_sent_events(served):
    versions = served.registry.client.search_model_versions("name='gpt'")
    assert versions, "needs the version the training test registered"
    latest = max(int(v.version) for v in versions)
    served.registry.promote("gpt", latest, reason="e2e: serve the trained LM")
    wait_for_version(served.settings, served.key, "gpt", latest)
    url = f"{served.settings.serve_url}/v1/models/gpt/generate"
    headers = {"X-API-Key": served.key}
    body = {"prompt": "def main(", "max_new_tokens": 40, "temperature": 0.8, "seed": 7}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    pieces = [data["text"] for kind, data in events if kind == "message"]
    assert events[-1] == (
        "done",
        {"version": latest, "pieces": len(pieces), "request_id": events[-1][1]["request_id"]},
    )
    assert 1 <= len(pieces) <= 40 and len("".join(pieces).encode()) <= 40 + 3
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as r:
        assert [d["text"] for k, d in _events(r) if k == "message"] == pieces  # same seed

    # The client leaves after two pieces of a long generation: the replica stops (its log
    # says after how many tokens), and the next request is served.
    long = body | {"max_new_tokens": 256, "seed": None}
    with httpx.stream("POST", url, json=long, headers=headers, timeout=60) as r:
        data = (line for line in r.iter_lines() if line.startswith("data: "))
        next(data), next(data)
    logs = served.settings.ray_temp_dir / "session_latest" / "logs" / "serve"

    def cancelled() -> list[int]:
        found = []
        for log in logs.glob("replica_models_Generator_*.log"):
            found += [int(n) for n in CANCELLED.findall(log.read_text(errors="replace"))]
        return found

    wait_for_condition(lambda: cancelled(), timeout=30)
    assert all(2 <= n < 256 for n in cancelled())
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as r:
        assert _events(r)[-1][0] == "done"

    refused = [
        (body | {"max_new_tokens": 100_000}, 422),  # over the server's limit
        (body | {"prompt": ""}, 422),
        (body | {"temperature": 0}, 422),
        (body | {"stream": True}, 422),  # unknown field
    ]
    for bad, status in refused:
        got = httpx.post(url, json=bad, headers=headers, timeout=30)
        assert got.status_code == status, (bad, got.text)
        assert got.json()["error"] == "invalid_input"
    predict = f"{served.settings.serve_url}/v1/models/gpt/predict"
    got = httpx.post(predict, json={"instances": [[1.0]]}, headers=headers, timeout=30)
    assert got.status_code == 422 and got.json()["error"] == "wrong_route"
    assert httpx.post(url, json=body, timeout=30).status_code == 401
