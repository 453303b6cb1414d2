"""The GPT language model through jobs.train: a worker killed at a random step, a run that
fails for good and is resubmitted under its name, each resuming from its last checkpoint;
then evaluated, and served: text streamed over HTTP as server-sent events.

The run with its faults is a module fixture, ``faulted_run``: it trains the GPT version
(``gpt_version``) that the evaluation and serving tests use, once, whichever of them runs
first. Its kill step is drawn from the session's seed (``AIMASS_TEST_SEED``), printed and
named in the assertion messages. Pass or fail comes from the job's own step lines
("[train] step N/T ...") and its status, never from timing.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest
import torch
from ray._common.test_utils import wait_for_condition
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors

from actors.pipeline import DEFAULT_NAMESPACE as STAGES
from actors.pipeline import in_namespace
from cluster import storage
from cluster.cli.deploy import deploy_models_api, rendered_config, wait_for_version
from cluster.settings import Settings
from models import package
from models.dataset import dataset_uri, read_manifest
from models.gpt import decode, encode
from models.registry import Registry
from models.weights import load_weights
from models.zoo import build_model

# The module's fixtures train the GPT (minutes, with its faults, on the 2-core machine)
# within one test's setup; the serving test's also trains the digits model first (~4 min).
pytestmark = pytest.mark.timeout(1800)

RUN = "lm-faults"
CHECKPOINT_MANAGER_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train v2's own file
# Two epochs are enough for every fault point: the first kill falls in epoch 2 (after the
# first checkpoint), the second right after the restart resumed at step steps_per_epoch + 1,
# and the resubmission resumes from that checkpoint and trains to the end. A third epoch only
# trained the resubmitted run longer.
EPOCHS = 2
# Worker lines carry Ray's "(RayTrainWorker pid=N)" prefix: a killed attempt's last lines
# may reach the log after the next attempt's first ones, so lines are told apart by pid.
STEP = re.compile(r"pid=(\d+)\)\s*\[train\] step (\d+)/(\d+)")
WORKER = re.compile(r"\[train\] worker rank (\d+)/\d+ pid (\d+)")
RESUMED = re.compile(
    r"pid=(\d+)\)\s*\[train\] resumed from the checkpoint of epoch (\d+)/\d+, step (\d+)"
)
REGISTERED = re.compile(r"\[train\] registered gpt version (\d+); test loss")
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


def train(local_cluster: Settings, repo_root, *overrides: str) -> Job:
    client = JobSubmissionClient(local_cluster.dashboard_url)
    sets = [f"--set={pair}" for pair in (f"epochs={EPOCHS}", "log_every=1", *overrides)]
    entrypoint = f"python -m jobs.train --config gpt_tiny --name {RUN} " + " ".join(sets)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(repo_root)})
    return Job(client, job_id)


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
    # Each poll reads the whole job log through the dashboard, on the cores that train: 0.5 s
    # here, where nothing is timed (the kill waits poll at wait_for_condition's 0.1 s).
    wait_for_condition(lambda: RESUMED.search(job.log), timeout=300, retry_interval_ms=500)
    resumed = RESUMED.search(job.log)
    pid = int(resumed.group(1))
    wait_for_condition(lambda: job.steps(pid), timeout=300, retry_interval_ms=500)
    return int(resumed.group(3)), job.steps(pid)[0], pid


@dataclass(frozen=True)
class FaultedRun:
    """What the jobs of the run killed twice and resubmitted logged (RELIABILITY.md F6)."""

    steps_per_epoch: int
    kill_at: int  # rank 1 first killed once rank 0 logged this step (after the 1st checkpoint)
    seed: str  # how to replay the draw of kill_at
    resumed: tuple[int, int]  # (checkpoint step, first step logged) after the first kill
    first_status: JobStatus  # the first job's, after a second kill with no failures left
    resubmitted: Job
    resubmitted_resumed: tuple[int, int]
    resubmitted_status: JobStatus

    def __str__(self) -> str:
        return (
            f"rank 1 killed after step {self.kill_at} of {self.steps_per_epoch}/epoch ({self.seed})"
        )


@pytest.fixture(scope="module")
def faulted_run(
    local_cluster: Settings, repo_root, lm_data: int, fault_seed, request
) -> Iterator[FaultedRun]:
    """The GPT run of F6, driven to its end: max_failures=1, rank 1 killed at a random step
    after the first checkpoint (survived), killed again after the restart (the job fails),
    then resubmitted under its name, which resumes and registers a version.

    It only drives the faults and records what the logs say: the F6 test judges them.
    """
    steps_per_epoch = lm_data
    rng = fault_seed.rng(f"{request.node.nodeid} kill step")
    kill_at = rng.randint(steps_per_epoch + 2, 2 * steps_per_epoch - 2)
    jobs: list[Job] = []
    try:
        job = train(local_cluster, repo_root, "max_failures=1")
        jobs.append(job)
        kill_worker_after(job, kill_at, checkpoints=1)
        checkpoint_step, first, pid = first_step_after_resume(job)
        wait_for_condition(
            lambda: len(WORKER.findall(job.log)) == 4, timeout=300, retry_interval_ms=500
        )
        kill_worker_after(job, first + 2, pid)
        first_status = job.wait()

        again = train(local_cluster, repo_root)
        jobs.append(again)
        again_checkpoint, again_first, _ = first_step_after_resume(again)
        again_status = again.wait()
        yield FaultedRun(
            steps_per_epoch,
            kill_at,
            str(fault_seed),
            (checkpoint_step, first),
            first_status,
            again,
            (again_checkpoint, again_first),
            again_status,
        )
    finally:  # a failure must not leave a training job burning the CPUs of later tests
        for job in jobs:
            if job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                job.client.stop_job(job.id)


@pytest.fixture(scope="module")
def gpt_version(faulted_run: FaultedRun) -> int:
    """The GPT version the module trained: the one the resubmitted run registered."""
    log = faulted_run.resubmitted.log
    registered = REGISTERED.search(log)
    assert faulted_run.resubmitted_status == JobStatus.SUCCEEDED and registered, (
        f"the resubmitted run ended {faulted_run.resubmitted_status} ({faulted_run}):\n"
        + log[-3000:]
    )
    return int(registered.group(1))


def test_killed_worker_and_resubmitted_run_resume_from_their_checkpoints(
    faulted_run: FaultedRun, local_cluster: Settings
):
    run, steps_per_epoch = faulted_run, faulted_run.steps_per_epoch
    # The first kill is survived: the restarted group resumes after the first checkpoint.
    assert run.resumed == (steps_per_epoch, steps_per_epoch + 1), run
    # The second, with no failures left, ends the job.
    assert run.first_status == JobStatus.FAILED, run
    # The resubmission under the same name resumes from that job's last checkpoint.
    checkpoint_step, first = run.resubmitted_resumed
    assert checkpoint_step % steps_per_epoch == 0 and checkpoint_step >= steps_per_epoch, run
    assert first == checkpoint_step + 1, run
    log = run.resubmitted.log
    assert run.resubmitted_status == JobStatus.SUCCEEDED, f"{run}\n{log[-3000:]}"
    assert max(run.resubmitted.steps()) == steps_per_epoch * EPOCHS, run
    registered = REGISTERED.search(log)
    assert registered, f"{run}\n{log[-3000:]}"
    version = Registry.from_settings(local_cluster).get("gpt", int(registered.group(1)))
    assert version.tags["aimass.run_name"] == RUN


def test_evaluate_measures_a_language_model_by_loss_and_perplexity(submit, gpt_version: int):
    out = submit("python", "-m", "jobs.evaluate", "--model", f"gpt@{gpt_version}").stdout
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


def test_the_trained_model_generates_text_over_http_as_server_sent_events(served, gpt_version: int):
    served.registry.promote("gpt", gpt_version, reason="e2e: serve the trained LM")
    wait_for_version(served.settings, served.key, "gpt", gpt_version)
    url = f"{served.settings.serve_url}/v1/models/gpt/generate"
    headers = {"X-API-Key": served.key}
    body = {"prompt": "def main(", "max_new_tokens": 40, "temperature": 0.8, "seed": 7}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    pieces = [data["text"] for kind, data in events if kind == "message"]
    assert events[-1] == (
        "done",
        {"version": gpt_version, "pieces": len(pieces), "request_id": events[-1][1]["request_id"]},
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


def test_the_openai_client_completes_and_chats_with_the_trained_version(served, gpt_version: int):
    served.registry.promote("gpt", gpt_version, reason="e2e: serve the trained LM")
    wait_for_version(served.settings, served.key, "gpt", gpt_version)
    client = openai.OpenAI(
        base_url=f"{served.settings.serve_url}/v1", api_key=served.key, max_retries=0, timeout=60
    )
    plain = client.completions.create(
        model="gpt", prompt="def main(", max_tokens=24, temperature=0.8, seed=7
    )
    assert plain.model == f"gpt:{gpt_version}" and plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 24 and plain.usage.prompt_tokens == len("def main(")
    # Streamed with the same seed: the same text, in OpenAI's chunks ending in [DONE].
    chunks = list(
        client.completions.create(
            model=f"gpt:{gpt_version}",
            prompt="def main(",
            max_tokens=24,
            temperature=0.8,
            seed=7,
            stream=True,
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"

    greedy = {"model": "gpt", "temperature": 0, "max_tokens": 64}
    lines = client.completions.create(prompt="import ", stop=["\n"], **greedy)
    assert "\n" not in lines.choices[0].text
    chat = client.chat.completions.create(
        messages=[{"role": "user", "content": "Write a function."}], n=2, top_p=0.9, **greedy
    )
    assert [c.message.role for c in chat.choices] == ["assistant", "assistant"]
    assert chat.choices[0].message.content == chat.choices[1].message.content  # greedy
    streamed = client.chat.completions.create(
        messages=[{"role": "user", "content": "Write a function."}], stream=True, **greedy
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == chat.choices[0].message.content

    assert "gpt" in [m.id for m in client.models.list()]
    wrong = openai.OpenAI(base_url=client.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.completions.create(model="gpt", prompt="x")
    assert err.value.status_code == 401 and err.value.body["type"] == "authentication_error"
    with pytest.raises(openai.BadRequestError, match="not a language model"):
        client.completions.create(model="digits", prompt="x")


def test_the_trained_version_exports_to_transformers_with_the_same_logits(
    submit, served, gpt_version: int, tmp_path
):
    from transformers import GPT2LMHeadModel  # heavy: only this test needs it

    out = submit(
        "python", "-m", "jobs.export", "--model", f"gpt@{gpt_version}", "--output", str(tmp_path)
    ).stdout
    assert f"[export] gpt v{gpt_version} in transformers format" in out, out[-2000:]
    folder = served.registry.fetch(served.registry.get("gpt", gpt_version))
    config = package.PackageConfig.read(folder)
    ours = load_weights(
        build_model(config.architecture, **config.options), folder / "model.safetensors"
    )
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor([encode("def main(self):\n    return")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours.eval()(ids)[0], atol=1e-4, rtol=1e-4)
    # The registry keeps it with the version, verified on the way out.
    fetched = served.registry.fetch_export(
        served.registry.get("gpt", gpt_version), "transformers", tmp_path / "again"
    )
    assert (fetched / "model.safetensors").read_bytes() == (
        tmp_path / "model.safetensors"
    ).read_bytes()


PIPELINE = {"num_stages": 2, "num_cpus_per_stage": 0.1, "ready_timeout_s": 120}
GREEDY = {"prompt": "def main(", "max_new_tokens": 32, "top_k": 1, "seed": 1}  # top_k 1: argmax


def _stage_actors() -> list:
    """The live stage actors of the Generator replicas' groups (namespace aimass-pipeline.*)."""
    alive = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000)
    return [
        a
        for a in alive
        if (a.name or "").startswith("stage:gpt:") and in_namespace(a.ray_namespace, STAGES)
    ]


def _text(url: str, key: str, body: dict) -> str | None:
    """The streamed text, or None when the stream did not end with its ``done`` event."""
    try:
        with httpx.stream("POST", url, json=body, headers={"X-API-Key": key}, timeout=60) as r:
            events = _events(r) if r.status_code == 200 else []
    except httpx.HTTPError:
        return None
    if not events or events[-1][0] != "done":
        return None
    return "".join(d["text"] for kind, d in events if kind == "message")


@pytest.fixture
def staged_generator(served, serve_ops, gpt_version: int) -> Iterator[str]:
    """The Generator redeployed with ``pipeline: {num_stages: 2}`` (serve deploy of the
    default config, its user_config changed), serving the trained version through two stage
    actors; the default config is deployed again afterwards, and the stages are gone."""
    served.registry.promote("gpt", gpt_version, reason="e2e: serve the trained LM in stages")
    wait_for_version(served.settings, served.key, "gpt", gpt_version)
    config = copy.deepcopy(rendered_config(served.settings))
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "Generator":
            d["user_config"] = {**d["user_config"], "pipeline": PIPELINE}
    url = f"{served.settings.serve_url}/v1/models/gpt/generate"
    deploy_models_api(served.settings, config)
    try:
        # The next request after the reconfigure loads the version again, over two stages.
        wait_for_condition(
            lambda: _text(url, served.key, GREEDY) is not None and len(_stage_actors()) == 2,
            timeout=180,
            retry_interval_ms=500,
        )
        yield url
    finally:
        deploy_models_api(served.settings)
        # The next request reloads it in the replica; the old group stops with its version.
        wait_for_condition(
            lambda: _text(url, served.key, GREEDY) is not None and not _stage_actors(),
            timeout=120,
            retry_interval_ms=500,
        )


def _unsharded(registry: Registry, version: int, body: dict, tmp_path) -> str:
    """The text the whole GPT samples greedily, here in the test's process."""
    info = registry.get("gpt", version)
    folder = registry.fetch(info, tmp_path)
    cfg = package.PackageConfig.read(folder)
    model = build_model(cfg.architecture, **cfg.options)
    load_weights(model, folder / package.WEIGHTS_FILE)
    idx = torch.tensor([encode(body["prompt"])])
    out = model.eval().generate(idx, body["max_new_tokens"], top_k=1)[0, idx.shape[1] :]
    return decode(out.tolist())


def test_a_version_served_in_pipeline_stages_answers_as_the_whole_model_and_survives_a_kill(
    served, staged_generator: str, gpt_version: int, tmp_path
):
    url = staged_generator
    expected = _unsharded(served.registry, gpt_version, GREEDY, tmp_path)
    assert _text(url, served.key, GREEDY) == expected

    # A bounded ledger of streams, 4 at a time, each retried up to 3 times; one stage is
    # SIGKILLed once a few have answered: the group restarts, running streams re-prefill.
    before = {a.name: a.pid for a in _stage_actors()}
    ledger: list[tuple[int, bool, int]] = []  # request, succeeded, tries
    body = GREEDY | {"max_new_tokens": 48}

    def one(i: int) -> None:
        for tries in range(1, 4):
            if _text(url, served.key, body) is not None:
                ledger.append((i, True, tries))
                return
        ledger.append((i, False, 3))

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = [pool.submit(one, i) for i in range(24)]
        wait_for_condition(lambda: len(ledger) >= 4, timeout=60)
        os.kill(before[min(before)], signal.SIGKILL)  # stage 1 of 2
        for future in done:
            future.result(timeout=120)
    ok = sum(1 for _, succeeded, _ in ledger if succeeded)
    assert len(ledger) == 24 and ok / len(ledger) >= 0.99, ledger
    wait_for_condition(  # the group is back: two live stages, the killed one a new process
        lambda: (
            len(now := {a.name: a.pid for a in _stage_actors()}) == 2
            and now[min(before)] != before[min(before)]
        ),
        timeout=60,
    )
    assert _text(url, served.key, GREEDY) == expected
