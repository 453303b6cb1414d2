"""Real local Ray clusters, one per datacenter, and a ledger of requests through the edge:
what tests/e2e/test_edge.py and test_rollout.py share (the session's ``fleet`` fixture,
tests/e2e/conftest.py: starting the clusters is most of either module's time).

Each cluster is its own ``cluster.local.up`` (``aimass up``'s code) with private ports, home
and token, its head labelled with its datacenter (``AIMASS_REGION``/``AIMASS_ZONE``), and the
model API deployed with ``serve deploy`` (one Gateway replica, one Predictor: two clusters
share two cores here). The clusters share one registry, a real MLflow tracking server, as a
fleet's datacenters do (README, Across datacenters).

API keys are per cluster (each gateway reads its own store). A client of the edge may be
answered by either cluster, so the keys are made in one cluster's store and that file is
replicated to the others (what a fleet's secret sync does); ``replicate_keys``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from cluster import local, storage
from cluster.cli.deploy import deploy_models_api, rendered_config, wait_for_version
from cluster.settings import Settings
from models import package
from models.onnx_export import export_onnx
from models.refs import CHAMPION
from models.registry import Registry
from models.weights import save_weights
from models.zoo import architecture, build_model
from serve_apps.keys import KeyStore, keys_uri

REGIONS = ("us-east", "eu-west")
ONE_DIGIT = {"instances": [[0.0, 0.0, 5.0, 13.0] + [4.0] * 60]}


def cluster_settings(root: Path, region: str, tracking_uri: str = "") -> Settings:
    """Settings of a private cluster in ``region``: its own home, token and ports. Every
    field is given, so no AIMASS_* variable of the test process leaks in."""
    home = root / region
    return Settings(
        home=home,
        storage_uri="",
        tracking_uri=tracking_uri,
        token_path=home / "auth_token",
        host="127.0.0.1",
        gcs_port=local.free_port(),
        dashboard_port=local.free_port(),
        serve_port=local.free_port(),
        prometheus="off",  # two clusters on two cores: their metrics are not under test here
        num_cpus=4,
        region=region,
        zone=f"{region}-a",
    )


def small_serve_config(settings: Settings) -> dict:
    """serve_config.yaml with one Gateway replica and one Predictor replica."""
    config = rendered_config(settings)
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "Gateway":
            d["num_replicas"] = 1
        elif d["name"] == "Predictor":
            d["autoscaling_config"] |= {"min_replicas": 1, "max_replicas": 1}
    return config


def digits_package(folder: Path, accuracy: float = 0.9) -> Path:
    """A real digits CNN package (weights, ONNX, config), as tests/conftest.py's
    ``make_package`` writes it, for module-scoped fixtures (which cannot use that one)."""
    folder.mkdir(parents=True)
    model = build_model("digits_cnn")
    save_weights(model, folder / package.WEIGHTS_FILE)
    export_onnx(model, torch.rand(2, 64), folder / package.ONNX_FILE)
    signature = architecture("digits_cnn").signature_for({})
    package.PackageConfig("digits_cnn", signature, {}, {"accuracy": accuracy}).write(folder)
    return folder


def register(registry: Registry, folder: Path, alias: str | None = CHAMPION) -> int:
    """Register ``folder`` as a new digits version (no training), aliased ``alias``."""
    run_id = registry.client.create_run(registry.experiment("e2e-datacenters")).info.run_id
    version = registry.register("digits", run_id, folder).version
    if alias:
        registry.set_alias("digits", alias, version, reason="e2e: registered directly")
    return version


def replicate_keys(source: Settings, *others: Settings) -> None:
    """Copy ``source``'s key store to the others (0600, as the store writes it)."""
    data = storage.read_bytes(keys_uri(source.storage_root))
    for other in others:
        storage.write_bytes(keys_uri(other.storage_root), data, private=True)


@dataclass
class DatacenterCluster:
    """One datacenter's Ray cluster, as its operator runs it."""

    settings: Settings

    @property
    def region(self) -> str:
        return self.settings.region

    def up(self) -> None:
        local.up(self.settings)

    def deploy(self, key: str, version: int) -> None:
        """``serve deploy`` the model API and wait until it answers with ``version``."""
        deploy_models_api(self.settings, small_serve_config(self.settings))
        wait_for_version(self.settings, key, "digits", version, timeout_s=300)

    def down(self) -> None:
        local.down(self.settings)

    def diagnosis(self, lines: int = 12) -> str:
        """Whether this cluster answers, and its Ray logs' last words about dead nodes,
        workers or memory: what a failed test needs to tell a crash from its own bug."""
        logs = self.settings.ray_temp_dir / "session_latest" / "logs"
        out = [f"[{self.region}] running: {local.is_running(self.settings)}"]
        for name in ("gcs_server.out", "raylet.out", "dashboard_agent.log"):
            with contextlib.suppress(OSError):
                text = (logs / name).read_text(errors="replace").splitlines()
                hits = [t for t in text if any(w in t for w in _TROUBLE)]
                out += [f"[{self.region}] {name}: {t[:300]}" for t in hits[-lines:]]
        return "\n".join(out)


# Words in Ray's logs that mark a node, raylet, agent or worker dying, or memory running out.
_TROUBLE = ("dead", "Dead", "DEAD", "OOM", "memory", "Killing", "killed", "exit", "Exit")


def diagnosis(clusters) -> str:
    """``DatacenterCluster.diagnosis`` of every cluster, and the kernel's OOM kills."""
    out = [c.diagnosis() for c in clusters]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
        out += [line for line in dmesg.splitlines() if "Out of memory" in line][-5:]
    return "\n".join(out)


def each(clusters, do) -> None:
    """``do(cluster)`` for every cluster at once (starting a head or deploying is mostly
    waiting), re-raising the first failure."""
    with ThreadPoolExecutor(max_workers=len(clusters)) as pool:
        for done in [pool.submit(do, c) for c in clusters]:
            done.result()


@dataclass(frozen=True)
class Fleet:
    """The clusters of ``fleet``, their shared registry and the API keys every one knows.

    Attributes:
        clusters: One cluster per region, serving ``digits@champion``.
        registry: The shared registry (the tracking server at ``tracking_uri``).
        tracking_uri: Its URL, as each cluster's settings and an operator's shell name it.
        keys: ``any``: an unrestricted key; ``eu``: one served only in eu-west.
        eu_key_id: The id of ``keys["eu"]``.
        root: The fleet's folder (homes, packages, the tracking server's files).
    """

    clusters: dict[str, DatacenterCluster]
    registry: Registry
    tracking_uri: str
    keys: dict[str, str]
    eu_key_id: str
    root: Path


@contextlib.contextmanager
def fleet(root: Path, regions: tuple[str, ...] = REGIONS):
    """One cluster per region on one tracking server, a digits champion registered (no
    training) and served in each; its keys made in the first region's store and replicated
    to the others. Every cluster is stopped after."""
    (root / "mlflow").mkdir(parents=True)
    with tracking_server(root / "mlflow") as url:
        clusters = {
            dc: DatacenterCluster(cluster_settings(root, dc, tracking_uri=url)) for dc in regions
        }
        try:
            each(clusters.values(), DatacenterCluster.up)
            first = clusters[regions[0]].settings
            registry = Registry.from_settings(first)
            champion = register(registry, digits_package(root / "pkg-v1"))
            store = KeyStore(keys_uri(first.storage_root))
            key_any, _ = store.create("e2e-fleet")
            key_eu, record_eu = store.create("e2e-fleet-eu", datacenters=("eu-west",))
            replicate_keys(first, *(c.settings for c in clusters.values() if c.settings != first))
            each(clusters.values(), lambda c: c.deploy(key_any, champion))
            keys = {"any": key_any, "eu": key_eu}
            yield Fleet(clusters, registry, url, keys, record_eu.id, root)
        finally:
            each(clusters.values(), DatacenterCluster.down)


@dataclass(frozen=True, slots=True)
class Entry:
    """One request's final outcome (after the client's retries)."""

    rid: str
    stream: str
    status: int | str  # the HTTP status, or the client error's name
    region: str | None  # X-Served-Region of the answer
    version: int | None  # the version that answered (200s)
    sent: float  # time.monotonic() of its first attempt
    answered: float  # ... and of its final outcome
    attempts: int
    body: str = ""  # the start of a non-200 answer


@dataclass(frozen=True, slots=True)
class Stream:
    """Clients that post one digit to ``url`` with ``key``, ``in_flight`` at a time; as a
    new end user each time (``X-User-ID``) when ``new_users``: a release's share is sticky
    per user, else per key."""

    url: str
    key: str
    in_flight: int = 1
    new_users: bool = False
    origin: str | None = None  # named in X-Origin-Datacenter, as an edge names it


@dataclass
class Ledger:
    """Bounded client load on loopback, one ledger entry per request id (RELIABILITY.md).

    Each stream's clients post until stopped or ``limit_s``. An answer >= 500, or none, is
    retried up to ``retries`` times with backoff (0.1, 0.2, 0.4 s), as a well-behaved
    client does; the ledger keeps the final outcome.

        with Ledger({"eu": Stream(url, key, 2)}) as load:
            load.wait_for(30)
            ...  # the fault
        assert load.success_rate("eu") >= 0.99
    """

    streams: dict[str, Stream]
    retries: int = 3
    limit_s: float = 420
    entries: list[Entry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Ledger:
        self._running.set()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._running.clear()
        self._thread.join(timeout=60)

    def of(self, stream: str, since: float = float("-inf")) -> list[Entry]:
        return [e for e in self.entries if e.stream == stream and e.sent >= since]

    def success_rate(self, *streams: str) -> float:
        mine = [e for e in self.entries if e.stream in streams]
        return sum(e.status == 200 for e in mine) / max(len(mine), 1)

    def wait_for(self, answered: int, timeout_s: float = 120) -> None:
        start, deadline = len(self.entries), time.monotonic() + timeout_s
        while len(self.entries) - start < answered:
            assert time.monotonic() < deadline, f"only {len(self.entries) - start} answers"
            time.sleep(0.1)

    def wait_until(self, condition, timeout_s: float, what: str) -> float:
        """Poll ``condition(self)`` until true; the time it became so."""
        deadline = time.monotonic() + timeout_s
        while not condition(self):
            assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
            time.sleep(0.1)
        return time.monotonic()

    async def _one(self, http: httpx.AsyncClient, name: str, stream: Stream) -> None:
        rid = uuid.uuid4().hex
        headers = {"X-API-Key": stream.key, "X-Request-ID": rid}
        if stream.new_users:
            headers["X-User-ID"] = uuid.uuid4().hex
        if stream.origin:
            headers["X-Origin-Datacenter"] = stream.origin
        sent = time.monotonic()
        status, region, version, body = None, None, None, ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(0.1 * 2 ** (attempt - 1))
            try:
                r = await http.post(stream.url, json=ONE_DIGIT, headers=headers)
                status, region = r.status_code, r.headers.get("x-served-region")
                if status == 200:
                    version, body = r.json()["version"], ""
                else:
                    body = r.text[:300]
                if status < 500:
                    break
            except httpx.HTTPError as err:
                status, region, body = type(err).__name__, None, str(err)[:300]
        self.entries.append(
            Entry(rid, name, status, region, version, sent, time.monotonic(), attempt + 1, body)
        )

    async def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        async with httpx.AsyncClient(timeout=30) as http:

            async def client(name: str, stream: Stream) -> None:
                while self._running.is_set() and time.monotonic() < deadline:
                    await self._one(http, name, stream)

            await asyncio.gather(
                *(
                    client(name, stream)
                    for name, stream in self.streams.items()
                    for _ in range(stream.in_flight)
                )
            )


@contextlib.contextmanager
def tracking_server(folder: Path):
    """A real MLflow tracking server on loopback (a SQLite database, artifacts proxied from
    ``folder/artifacts``): the registry every datacenter's cluster shares. Yields its URL."""
    port, log = local.free_port(), folder / "mlflow-server.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",  # two cores here
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        # `mlflow server` runs uvicorn as a child: stop the process group started here.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
