"""The model path, once per session: ingest and train submitted with `ray job submit`
(the documented command), then `serve deploy`, on the shared local cluster."""

from __future__ import annotations

import asyncio
import collections
import copy
import os
import random
import secrets
import shlex
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve
from ray.util.state import list_actors

from bench._open_loop import open_loop
from cluster.cli.deploy import deploy_models_api, rendered_config, wait_for_version
from cluster.settings import Settings
from models.registry import Registry


@dataclass(frozen=True)
class Served:
    settings: Settings
    key: str
    version: int
    registry: Registry

    @property
    def predict_url(self) -> str:
        return f"{self.settings.serve_url}/v1/models/digits/predict"


def run_in_user_shell(
    script: str, home: Path, repo: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run ``script`` with bash in ``repo`` as a user's new shell would, after the README's
    `source .venv/bin/activate`: what `env -i PATH=… HOME=…` leaves (PATH without this venv,
    HOME ``home``), plus ``env`` (the test cluster's AIMASS_* ports), nothing else."""
    venv_bin = Path(sys.prefix) / "bin"
    assert (repo / ".venv").resolve() == Path(sys.prefix).resolve(), f"tests run in {sys.prefix}"
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != venv_bin)
    return subprocess.run(
        ["bash", "-c", f"source .venv/bin/activate\n{script}"],
        cwd=repo,
        env={"PATH": path, "HOME": str(home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def user_home(settings: Settings) -> Path:
    """A HOME whose ~/.ray/auth_token (where Ray's CLIs look) is the cluster's token."""
    home = settings.home / "user-home"
    token = home / ".ray" / "auth_token"
    if not os.path.lexists(token):
        token.parent.mkdir(parents=True, exist_ok=True)
        token.symlink_to(settings.token_path)
    return home


def ray_job_submit(
    settings: Settings, repo: Path, *entrypoint: str, expect_ok: bool = True
) -> subprocess.CompletedProcess:
    """`ray job submit --address … --working-dir . -- <entrypoint>`, as the README says, from
    a user's shell (``run_in_user_shell``): the job commands of the README work as written."""
    command = f"ray job submit --address {settings.dashboard_url} --working-dir . -- "
    proc = run_in_user_shell(command + shlex.join(entrypoint), user_home(settings), repo)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    """us-east and eu-west, each its own Ray cluster, on one shared tracking server, the
    model API serving digits in each (tests/e2e/multicluster.py). test_edge.py and
    test_rollout.py share it: starting them is most of either module's time."""
    import multicluster  # torch and the clusters' helpers: only the modules that use it

    with multicluster.fleet(tmp_path_factory.mktemp("fleet")) as f:
        yield f


@pytest.fixture(scope="session")
def user_shell():
    """``user_shell(script, home, repo, env=None)``: ``run_in_user_shell``, for tests that run
    the README's own shell blocks."""
    return run_in_user_shell


@pytest.fixture(scope="session")
def submit(local_cluster: Settings, repo_root: Path):
    """Submit a job to the session cluster: ``submit("python", "-m", "jobs.x", ...)``."""
    return lambda *entrypoint, expect_ok=True: ray_job_submit(
        local_cluster, repo_root, *entrypoint, expect_ok=expect_ok
    )


@pytest.fixture(scope="session")
def served(local_cluster: Settings, repo_root: Path) -> Served:
    out = ray_job_submit(local_cluster, repo_root, "python", "-m", "jobs.ingest").stdout
    assert "[ingest] test: 360 rows" in out
    out = ray_job_submit(
        local_cluster, repo_root, "python", "-m", "jobs.train", "--config", "digits_cnn"
    ).stdout
    assert "[train] alias champion -> digits version" in out, out[-3000:]
    aimass = str(Path(sys.executable).with_name("aimass"))
    created = subprocess.run(
        [aimass, "keys", "create", "e2e"], capture_output=True, text=True, check=True
    )
    key = created.stdout.strip().splitlines()[-1]
    registry = Registry.from_settings(local_cluster)
    version = registry.resolve("digits@champion").version
    deploy_models_api(local_cluster)
    wait_for_version(local_cluster, key, "digits", version)
    return Served(local_cluster, key, version, registry)


SEED_ENV = "AIMASS_TEST_SEED"


class FaultSeed:
    """The seed of this session's random fault points: ``AIMASS_TEST_SEED``, or a fresh one.

    Each fault point draws from its own stream, named after it, so one test run alone with
    the same seed makes the choices it made in the full run. ``str()`` says how to replay.
    """

    def __init__(self, value: int) -> None:
        self.value = value
        self.drawn: list[str] = []

    def rng(self, name: str) -> random.Random:
        """The stream for the fault point ``name`` (a test's node id, say)."""
        self.drawn.append(name)
        print(f"random fault points of {name}: {self}")
        return random.Random(f"{self.value}:{name}")

    def __str__(self) -> str:
        return f"{SEED_ENV}={self.value}"


FAULT_SEED = FaultSeed(int(os.environ.get(SEED_ENV) or secrets.randbits(32)))


@pytest.fixture(scope="session")
def fault_seed() -> FaultSeed:
    """Where tests draw random fault points from (put it in their assertion messages)."""
    return FAULT_SEED


def pytest_terminal_summary(terminalreporter) -> None:
    """The seed, in every run's output that drew from it (passed or not)."""
    if FAULT_SEED.drawn:
        terminalreporter.write_line(
            f"random fault points drawn with {FAULT_SEED}; set it to replay them"
        )


ONE_DIGIT = {"instances": [[0.0, 0.0, 5.0, 13.0] + [4.0] * 60]}


class Traffic:
    """Bounded client load on loopback, with a ledger: one final outcome per request id.

    ``in_flight`` clients post ``body`` (a dict, or a function making one per request) and
    ``headers()`` to ``url`` until stopped (or ``limit_s``), ``pause_s`` apart. A request
    answered >= 500, or not answered, is retried up to ``retries`` times with backoff (0.1,
    0.2, 0.4 s ...), as a well-behaved client does; the ledger keeps its last outcome.
    With ``feedback_url``, ``body()`` makes (body, labels) and each answered request's
    labels are posted there a moment later, as a client learning the truth does
    (``fed_back`` counts those taken).

        with Traffic(url, key) as load:
            load.wait_for(50)          # requests answered so far
            ...                        # the fault
        assert load.failures() == []
    """

    def __init__(
        self,
        url: str,
        key: str,
        body,
        in_flight: int = 4,
        retries: int = 0,
        limit_s: float = 180,
        headers=None,
        pause_s: float = 0.0,
        feedback_url: str | None = None,
    ) -> None:
        self.url, self.key, self.body = url, key, body
        self.in_flight, self.retries, self.limit_s = in_flight, retries, limit_s
        self.headers = headers or (lambda: {})
        self.pause_s, self.feedback_url = pause_s, feedback_url
        self.ledger: list[tuple[str, object, object, int]] = []  # rid, status, version, tries
        self.fed_back = 0
        self.feedback_refused: list[tuple[int, str]] = []
        self._labels: collections.deque = collections.deque()  # (rid, labels, answered at)
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        self._running.set()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._running.clear()
        self._thread.join(timeout=60)

    def failures(self) -> list:
        return [entry for entry in self.ledger if entry[1] != 200]

    def wait_for(self, answered: int, timeout: float = 120) -> None:
        start = len(self.ledger)
        deadline = time.monotonic() + timeout
        while len(self.ledger) - start < answered:
            assert time.monotonic() < deadline, f"only {len(self.ledger) - start} answers"
            time.sleep(0.1)

    async def _one(self, http: httpx.AsyncClient) -> None:
        rid = uuid.uuid4().hex
        headers = {"X-API-Key": self.key, "X-Request-ID": rid} | self.headers()
        body = self.body() if callable(self.body) else self.body
        if self.feedback_url:
            body, labels = body
        outcome, version = None, None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(0.1 * 2 ** (attempt - 1))
            try:
                r = await http.post(self.url, json=body, headers=headers)
                outcome = r.status_code
                version = r.json().get("version") if outcome == 200 else r.text[:200]
                if outcome < 500:
                    break
            except httpx.HTTPError as err:
                outcome, version = type(err).__name__, str(err)[:200]
        self.ledger.append((rid, outcome, version, attempt + 1))
        if self.feedback_url and outcome == 200:
            self._labels.append((rid, labels, time.monotonic()))

    async def _feed(self, http: httpx.AsyncClient) -> None:
        """Post each answer's labels once it is 1 s old; a 404 (the answer has not reached
        the release controller yet: outcomes go in batches) is tried again for 30 s."""
        headers = {"X-API-Key": self.key}
        while self._running.is_set() or self._labels:
            if not self._labels or time.monotonic() - self._labels[0][2] < 1.0:
                await asyncio.sleep(0.2)
                continue
            rid, labels, at = self._labels.popleft()
            r = await http.post(
                self.feedback_url, json={"request_id": rid, "labels": labels}, headers=headers
            )
            if r.status_code == 200:
                self.fed_back += 1
            elif r.status_code == 404 and time.monotonic() - at < 30:
                self._labels.append((rid, labels, at))
            elif r.status_code != 404:
                self.feedback_refused.append((r.status_code, r.text[:200]))

    async def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        async with httpx.AsyncClient(timeout=30) as http:

            async def client() -> None:
                while self._running.is_set() and time.monotonic() < deadline:
                    await self._one(http)
                    await asyncio.sleep(self.pause_s)

            feed = [self._feed(http)] if self.feedback_url else []
            await asyncio.gather(*(client() for _ in range(self.in_flight)), *feed)


@pytest.fixture(scope="session")
def traffic(served: Served):
    """``traffic(**options)``: a Traffic of one-digit predictions against ``served`` (a fixed
    digit unless ``body=`` says otherwise)."""
    return lambda **options: Traffic(
        served.predict_url, served.key, **({"body": ONE_DIGIT} | options)
    )


@pytest.fixture(scope="session")
def arrivals(served: Served):
    """``arrivals(rate, duration_s)``: open-loop one-digit predictions against ``served``;
    returns the ledger (one Answer per request)."""
    return lambda rate, duration_s: open_loop(
        served.predict_url, served.key, ONE_DIGIT, rate, duration_s
    )


class ServeOps:
    """What an operator sees and does to the deployed model API, through a Ray driver."""

    app = "models"  # the application's name in serve_config.yaml

    def __init__(self, served: Served) -> None:
        self.served, self.settings = served, served.settings

    def replicas(self, deployment: str) -> list[str]:
        """The live replica actors' names."""
        prefix = f"SERVE_REPLICA::{self.app}#{deployment}#"
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
        return sorted(a.name for a in alive if (a.name or "").startswith(prefix))

    def running(self, deployment: str) -> int:
        status = serve.status().applications[self.app].deployments[deployment]
        return status.replica_states.get("RUNNING", 0)

    def stable(self, deployment: str, replicas: int) -> bool:
        """The application runs, with at least ``replicas`` of ``deployment`` RUNNING."""
        status = serve.status().applications[self.app]
        return status.status == "RUNNING" and self.running(deployment) >= replicas

    def settled(self, deployment: str, replicas: int) -> bool:
        """The application runs with exactly ``replicas`` live ``deployment`` replicas: none
        starting, none draining."""
        return self.stable(deployment, replicas) and len(self.replicas(deployment)) == replicas

    def deploy(self, **predictor: dict) -> None:
        """serve deploy of the default config with the Predictor's options updated (nested
        dicts merged one level), or the default config itself when none are given."""
        config = copy.deepcopy(rendered_config(self.settings))
        for d in config["applications"][0]["deployments"]:
            if d["name"] == "Predictor":
                for option, value in predictor.items():
                    d[option] = {**d[option], **value} if isinstance(value, dict) else value
        deploy_models_api(self.settings, config)


@pytest.fixture(scope="module")
def serve_ops(served: Served):
    ray.init(address=served.settings.gcs_address, log_to_driver=False)
    yield ServeOps(served)
    ray.shutdown()
