"""What the serving benchmarks share: a model served by the gateway, a plain FastAPI
baseline running the same handler, and an asyncio load generator to drive both.

- ``serve_champion``: the model on the cluster (the dataset ingested and the model trained
  with ``ray job submit``-style jobs when the registry lacks a champion), the model API
  deployed with ``serve deploy``, a fresh API key, the champion's ONNX file fetched.
- ``baseline_app``: plain FastAPI, one process, the gateway's predict path in-process: the
  same KeyStore check, request id, capped JSON body, pydantic validation, width checks, one
  ONNX Runtime call per request and the same response model. What it leaves out is what
  the benchmark measures: Serve's proxy and the Ray hops (proxy -> Gateway -> Predictor),
  the routing table, outcome reporting, metrics, the request-id middleware.
- ``run_load``: a closed-loop client on raw asyncio streams (uvloop), one keep-alive
  HTTP/1.1 connection per concurrent request; ``client_ceiling`` is its rate against a
  server that answers a canned response, i.e. the most it could measure on this machine.
- ``alternate``: both sides in turn, with the CPU time each side's processes (the whole
  cluster for ours; the server for the baseline; the client on both) spent per answered
  request, by process (``cpu_ms_per_request``): where the time goes, and a figure that
  holds better than req/s when other work shares the cores.

Servers started here run as ``python -m bench._serve_load {baseline,canned} ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

# Module level: this module's postponed annotations are resolved in its globals, and FastAPI
# must see `Request` and `Header` there, or it takes `request` for a query parameter.
from fastapi import Header, Request
from fastapi.responses import JSONResponse

from bench._cluster import log
from cluster import local

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
_READ_TIMEOUT_S = 30.0


# ---- the load generator ---------------------------------------------------------------


@dataclass(slots=True)
class LoadResult:
    """One closed-loop run: answers by status, latencies of the 200s, wall time."""

    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    load_avg: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)


def post_request(port: int, path: str, body: bytes, key: str, x_api_key: bool = False) -> bytes:
    """The bytes of one keep-alive POST with a JSON body and an API key (as a bearer token,
    or in ``X-API-Key``: LitServe's header)."""
    auth = f"X-API-Key: {key}" if x_api_key else f"Authorization: Bearer {key}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response off ``reader``: its status and lowercased header block."""
    headers = (await reader.readuntil(b"\r\n\r\n")).lower()
    at = headers.find(b"\r\ncontent-length:")
    if at >= 0:
        await reader.readexactly(int(headers[at + 17 : headers.index(b"\r\n", at + 2)]))
    elif b"transfer-encoding: chunked" in headers:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    return int(headers[9:12]), headers


async def _load(port: int, requests: list[bytes], concurrency: int, seconds: float) -> LoadResult:
    conns = [await asyncio.open_connection(HOST, port) for _ in range(concurrency)]
    result = LoadResult(seconds=0.0, load_avg=(os.getloadavg()[0], 0.0))
    perf = time.perf_counter
    start = perf()
    end = start + seconds

    async def worker(i: int) -> None:
        reader, writer = conns[i]
        k = i
        while (t0 := perf()) < end:
            writer.write(requests[k % len(requests)])
            k += concurrency
            try:
                status, _ = await asyncio.wait_for(read_response(reader), _READ_TIMEOUT_S)
            except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as err:
                result.errors[type(err).__name__] = result.errors.get(type(err).__name__, 0) + 1
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
                continue
            if status == 200:
                result.latencies_ms.append((perf() - t0) * 1e3)
            else:
                result.errors[str(status)] = result.errors.get(str(status), 0) + 1
        writer.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.seconds = perf() - start
    result.load_avg = (result.load_avg[0], os.getloadavg()[0])
    return result


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # plain asyncio: a lower client ceiling, which is reported
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_load(port: int, requests: list[bytes], concurrency: int, seconds: float) -> LoadResult:
    """``concurrency`` connections each sending ``requests`` in turn, back to back, for
    ``seconds`` (requests in flight then are finished and counted)."""
    with _runner() as runner:
        return runner.run(_load(port, requests, concurrency, seconds))


def summary(runs: list[LoadResult]) -> dict:
    """req/s (200s over wall time) and latency percentiles over all ``runs`` together."""
    latencies = np.concatenate([np.asarray(r.latencies_ms) for r in runs])
    seconds = sum(r.seconds for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
    return {
        "req_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(seconds, 1),
        "segments": [
            {
                "req_per_s": round(r.ok / r.seconds, 1),
                "p50_ms": round(float(np.percentile(r.latencies_ms, 50)), 2),
                "load_avg_1m": [round(x, 2) for x in r.load_avg],
            }
            for r in runs
        ],
    }


def _role(proc: psutil.Process) -> str:
    """A process's part: Ray's title for its workers without the method it is running
    (``ray::ServeReplica:models:Gateway``, ``ray::_DeployedController`` for
    ``ray::_DeployedController.record``), the executable's name otherwise (raylet,
    gcs_server, python for the dashboard...)."""
    cmdline = proc.cmdline()
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0].split(".")[0]
    return proc.name()


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    """Each process's role and user + system CPU seconds so far, by pid (a role is read
    with the time: Ray renames an actor's process as it runs each method)."""
    out: dict[int, tuple[str, float]] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = (_role(proc), t.user + t.system)
    return out


def cpu_spent(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two ``cpu_seconds`` readings, summed by role. A process
    absent before (started in between) counts from its start."""
    spent: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        spent[role] = spent.get(role, 0.0) + cpu - before.get(pid, (role, 0.0))[1]
    return spent


def cpu_ms_per_request(spent: dict[str, float], requests: int, top: int = 6) -> dict:
    """CPU milliseconds per answered request, by role: the ``top`` biggest and the total."""
    per = {role: 1e3 * cpu / max(requests, 1) for role, cpu in spent.items()}
    biggest = sorted(per.items(), key=lambda kv: -kv[1])[:top]
    return {"total": round(sum(per.values()), 2), **{k: round(v, 2) for k, v in biggest}}


def alternate(
    sides: dict[str, tuple[int, list[psutil.Process]]],
    requests: dict[str, list[bytes]],
    concurrency: int,
    seconds: float,
    rounds: int,
    warmup_s: float,
) -> dict[str, dict]:
    """Warm each side up, then run them in turn (ABAB...) ``rounds`` times: slow drift of
    the machine's load falls on both sides alike. ``sides`` maps a name to its port and the
    server processes whose CPU time is counted (this process's, the client's, always).
    Returns each side's ``summary`` with CPU ms per request."""
    for name, (port, _) in sides.items():
        log(f"warm-up: {name}, {warmup_s:.0f} s at concurrency {concurrency}")
        run_load(port, requests[name], concurrency, warmup_s)
    runs: dict[str, list[LoadResult]] = {name: [] for name in sides}
    cpu: dict[str, dict[str, float]] = {name: {} for name in sides}
    client = psutil.Process()
    for i in range(rounds):
        for name, (port, procs) in sides.items():
            before = cpu_seconds([*procs, client])
            r = run_load(port, requests[name], concurrency, seconds)
            after = cpu_seconds([*procs, client])
            for role, spent in cpu_spent(before, after).items():
                cpu[name][role] = cpu[name].get(role, 0.0) + spent
            log(
                f"round {i + 1}/{rounds} {name}: {r.ok / r.seconds:.0f} req/s, "
                f"p50 {np.percentile(r.latencies_ms, 50):.2f} ms, errors {r.errors or 0}, "
                f"load {r.load_avg[0]:.1f}->{r.load_avg[1]:.1f}"
            )
            runs[name].append(r)
    out = {}
    for name, rs in runs.items():
        out[name] = summary(rs)
        out[name]["cpu_ms_per_request"] = cpu_ms_per_request(cpu[name], out[name]["requests"])
    return out


# ---- servers started by the benchmarks ------------------------------------------------


def _wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {proc.args} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"server {proc.args} did not listen on {port} in {timeout_s:.0f} s")


@contextlib.contextmanager
def server(
    mode: str, *args: str, nice: int = 0, module: str = "bench._serve_load", env=None
) -> Iterator[tuple[int, list[psutil.Process]]]:
    """Run ``python -m <module> [mode] --port P <args>`` at niceness ``nice`` (never below
    this process's), with ``env`` added to this one's; yield P and its processes (the
    server and any workers it started); stop them all on exit."""
    from cluster.local import free_port

    port = free_port(HOST)
    increment = nice - os.nice(0)
    cmd = [
        *(["nice", "-n", str(increment)] if increment > 0 else []),
        sys.executable,
        *("-m", module, *([mode] if mode else []), "--port", str(port), *args),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL
    )
    main = psutil.Process(proc.pid)  # `nice` execs python: the same pid
    try:
        _wait_listening(port, proc)
        yield port, [main, *main.children(recursive=True)]
    finally:
        children = []
        with contextlib.suppress(psutil.Error):
            children = main.children(recursive=True)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:  # workers its shutdown left behind
            with contextlib.suppress(psutil.Error):
                child.kill()


def client_ceiling(concurrency: int, seconds: float, body_bytes: int) -> dict:
    """The load generator against a server answering a canned response: the most req/s it
    can measure here (both share this machine's cores, as in the real runs)."""
    with server("canned") as (port, _):
        requests = [post_request(port, "/", b"x" * body_bytes, "k")]
        run_load(port, requests, concurrency, 1.0)
        r = run_load(port, requests, concurrency, seconds)
    return {
        "req_per_s": round(r.ok / r.seconds, 1),
        "p50_ms": round(float(np.percentile(r.latencies_ms, 50)), 3),
    }


async def _canned(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = json.dumps({"predictions": [0], "probabilities": [[0.1] * 10]}).encode()
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            at = head.find(b"content-length:")
            if at >= 0:
                await reader.readexactly(int(head[at + 15 : head.index(b"\r\n", at)]))
            writer.write(answer)


def serve_canned(port: int) -> None:
    async def main() -> None:
        srv = await asyncio.start_server(_canned, HOST, port)
        await srv.serve_forever()

    with _runner() as runner:
        runner.run(main())


def baseline_app(
    onnx: Path, keys_uri: str, model: str, version: int, input_shape: list[int], threads: int
):
    """The gateway's predict path without Serve: one FastAPI app, one process."""
    from fastapi import FastAPI
    from pydantic import ValidationError

    from models.evaluation import softmax
    from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session
    from serve_apps._private.http import (
        ApiError,
        error_response,
        read_json_body,
        request_id,
        validation_message,
    )
    from serve_apps.keys import AuthError, KeyStore, presented_key
    from serve_apps.schemas import GatewayConfig, PredictRequest, PredictResponse

    app = FastAPI()
    session = cpu_session(onnx, threads)
    keys, config = KeyStore(keys_uri), GatewayConfig()
    width = int(np.prod(input_shape))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err, request_id(request))

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse)
    async def predict(
        name: str,
        request: Request,
        authorization: str | None = Header(None),
        x_api_key: str | None = Header(None),
    ) -> PredictResponse:
        rid = request_id(request)
        try:
            keys.authenticate(presented_key(authorization, x_api_key), scope="predict")
        except AuthError as err:
            raise ApiError(err.status, "unauthorized", str(err)) from None
        if name != model:
            raise ApiError(404, "model_not_found", f"No model {name!r} is being served.")
        body = await read_json_body(request, config.max_body_bytes)
        try:
            parsed = PredictRequest.model_validate(body)
        except ValidationError as err:
            raise ApiError(422, "invalid_input", validation_message(err)) from None
        if len(parsed.instances) > config.max_instances:
            raise ApiError(422, "invalid_input", "Too many instances.")
        for i, instance in enumerate(parsed.instances):
            if len(instance) != width:
                raise ApiError(422, "invalid_input", f"instances[{i}] has {len(instance)} values.")
        inputs = np.asarray(parsed.instances, dtype=np.float32).reshape(-1, *input_shape)
        proba = softmax(session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0])
        return PredictResponse(
            model=name,
            version=version,
            predictions=proba.argmax(axis=1).tolist(),
            probabilities=proba.astype(np.float64).round(6).tolist(),
            request_id=rid,
        )

    return app


# ---- the gateway side ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Served:
    """A champion served by the deployed model API, with what the baseline needs."""

    model: str
    version: int
    architecture: str
    input_shape: list[int]
    onnx: Path
    key: str
    key_id: str
    keys_uri: str
    port: int
    threads: int  # the Predictor's ONNX Runtime intra-op threads (serve_config.yaml)


def ensure_champion(settings, registry, model: str, train: str):
    """``model``'s champion; when it has none, ingest digits (unless there) and train it
    with ``jobs.train <train>``, as jobs the way ``ray job submit`` runs them."""
    from cluster import storage
    from cluster.cli.jobs_client import run_job
    from models.dataset import dataset_uri
    from models.exceptions import ModelNotFound

    try:
        return registry.resolve(f"{model}@champion")
    except ModelNotFound:
        if not storage.exists(f"{dataset_uri(settings.storage_root, 'digits')}/manifest.json"):
            run_job(settings, "python -m jobs.ingest --dataset digits", REPO, log)
        run_job(settings, f"python -m jobs.train {train}", REPO, log)
        return registry.resolve(f"{model}@champion")


def serve_champion(settings, model: str, train: str, folder: Path) -> Served:
    """Ingest and train (as jobs) when ``model`` has no champion, deploy the model API,
    create an API key and wait until the champion answers; fetch its package to ``folder``."""
    from cluster.cli.deploy import deploy_models_api, wait_for_version
    from models.registry import Registry
    from serve_apps.keys import KeyStore, keys_uri

    registry = Registry.from_settings(settings)
    info = ensure_champion(settings, registry, model, train)
    deploy_models_api(settings)
    key, record = KeyStore(keys_uri(settings.storage_root)).create("bench-serve")
    log(f"deployed the model API; waiting for {model} v{info.version}")
    wait_for_version(settings, key, model, info.version)
    return served_version(settings, registry, info, folder, key, record.id)


def served_version(settings, registry, info, folder: Path, key: str, key_id: str) -> Served:
    """``info``'s package fetched to ``folder``, with what a baseline needs to serve it as
    the model API does (the Predictor's ONNX Runtime threads from serve_config.yaml)."""
    from cluster.cli.deploy import rendered_config
    from models import package
    from serve_apps.keys import keys_uri

    pkg = registry.fetch(info, folder)
    config = package.PackageConfig.read(pkg)
    deployments = rendered_config(settings)["applications"][0]["deployments"]
    predictor = next(d for d in deployments if d["name"] == "Predictor")
    return Served(
        model=info.name,
        version=info.version,
        architecture=config.architecture,
        input_shape=list(config.signature.input_shape),
        onnx=pkg / package.ONNX_FILE,
        key=key,
        key_id=key_id,
        keys_uri=keys_uri(settings.storage_root),
        port=settings.serve_port,
        threads=predictor["user_config"]["intra_op_threads"],
    )


def revoke(served: Served) -> None:
    from serve_apps.keys import KeyStore

    KeyStore(served.keys_uri).revoke(served.key_id)


def predict_requests(
    served: Served, port: int, instances: np.ndarray, x_api_key: bool = False, prefix: str = ""
) -> list[bytes]:
    """One single-instance predict request per row of ``instances``, to ``port``
    (under the route ``prefix`` of the app answering it)."""
    path = f"{prefix}/v1/models/{served.model}/predict"
    return [
        post_request(
            port, path, json.dumps({"instances": [row.tolist()]}).encode(), served.key, x_api_key
        )
        for row in instances.reshape(len(instances), -1)
    ]


def check_answers(
    served: Served, port: int, instance: np.ndarray, x_api_key: bool = False, prefix: str = ""
) -> None:
    """One request by a standard client: 200 with the served version, or raise."""
    auth = {"X-API-Key": served.key} if x_api_key else {"Authorization": f"Bearer {served.key}"}
    r = httpx.post(
        f"http://{HOST}:{port}{prefix}/v1/models/{served.model}/predict",
        json={"instances": [instance.reshape(-1).tolist()]},
        headers=auth,
        timeout=30,
    )
    if r.status_code != 200 or r.json()["version"] != served.version:
        raise RuntimeError(f"port {port} answered {r.status_code}: {r.text[:300]}")


def models_app(settings, timeout_s: float = 10) -> dict:
    """The model API's entry in Serve's REST API (``/api/serve/applications/``)."""
    from cluster.local import auth_headers

    r = httpx.get(
        f"{settings.dashboard_url}/api/serve/applications/",
        headers=auth_headers(settings),
        timeout=timeout_s,
    )
    return r.json()["applications"]["models"]


def replicas(settings) -> dict[str, int]:
    """Running replicas per deployment of the model API (Serve's REST API)."""
    deployments = models_app(settings)["deployments"]
    return {
        name: sum(1 for rep in d["replicas"] if rep["state"] == "RUNNING")
        for name, d in deployments.items()
    }


def gateway_niceness(settings) -> int | None:
    """The niceness Ray runs the Gateway replicas at (the raylet's ``worker_niceness``)."""
    from cluster.local import cluster_processes

    for proc in cluster_processes(settings):
        with contextlib.suppress(psutil.Error):
            if "ServeReplica:models:Gateway" in " ".join(proc.cmdline()):
                return proc.nice()
    return None


def serve_env() -> dict[str, str]:
    """The RAY_SERVE_* variables this run's cluster starts with: the project's own
    (``cluster.local.SERVE_ENV``), overridden by any set when the benchmark started."""
    given = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    return dict(sorted({**local.SERVE_ENV, **given}.items()))


def measure(settings, model: str, train: str, args, folder: Path, limit=None) -> dict:
    """The whole comparison: serve ``model`` (training it if need be), start the baseline,
    check both answer, alternate the load, measure the client's ceiling. ``limit``, if
    given, is called as ``limit(served, instances, nice)`` while the model's files exist."""
    from cluster.local import cluster_processes
    from models.dataset import dataset_uri, read_manifest

    served = serve_champion(settings, model, train, folder)
    try:
        x_test, _ = read_manifest(dataset_uri(settings.storage_root, "digits")).load_split("test")
        instances = x_test[:64]
        nice = gateway_niceness(settings) if args.match_nice else None
        before = replicas(settings)
        with contextlib.ExitStack() as servers:
            if args.floor:
                servers.enter_context(serve_floor(settings, served, instances[0]))
            baseline = servers.enter_context(
                server("baseline", *baseline_args(served), nice=nice or 0)
            )
            sides = {"ours": (served.port, cluster_processes(settings)), "baseline": baseline}
            if args.litserve:
                sides["litserve"] = servers.enter_context(litserve_server(served, nice or 0))
            if args.floor:
                sides["serve_floor"] = sides["ours"]
            for name, (port, _) in sides.items():
                check_answers(served, port, instances[0], **_route(name))
            requests = {
                name: predict_requests(served, port, instances, **_route(name))
                for name, (port, _) in sides.items()
            }
            figures = alternate(
                sides, requests, args.concurrency, args.duration, args.rounds, args.warmup
            )
        after = replicas(settings)
        body_bytes = len(requests["ours"][0].split(b"\r\n\r\n", 1)[1])
        ceiling = client_ceiling(args.concurrency, min(args.duration, 5.0), body_bytes)
        extra = limit(served, x_test, nice or 0) if limit else {}
    finally:
        revoke(served)
    return {
        **figures,
        "client_ceiling": ceiling,
        "model": {
            "name": served.model,
            "version": served.version,
            "architecture": served.architecture,
            "ort_threads": served.threads,
        },
        "load": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "instances_per_request": 1,
        },
        "baseline_nice": nice,
        "serve_replicas": {"before": before, "after": after},
        "serve_env": serve_env(),
        **extra,
    }


def _route(side: str) -> dict:
    """How a side is called: LitServe checks ``X-API-Key``; the floor app has a prefix."""
    from bench._serve_floor import ROUTE_PREFIX

    return {
        "x_api_key": side == "litserve",
        "prefix": ROUTE_PREFIX if side == "serve_floor" else "",
    }


@contextlib.contextmanager
def serve_floor(settings, served: Served, instance: np.ndarray, timeout_s: float = 120):
    """``bench._serve_floor`` deployed beside the model API until exit, then removed (the
    model API redeployed alone: Serve deletes applications a config no longer lists)."""
    from bench._serve_floor import ROUTE_PREFIX, application
    from cluster.cli.deploy import deploy_models_api, rendered_config

    config = rendered_config(settings)
    deploy_models_api(
        settings, {**config, "applications": [*config["applications"], application(served)]}
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                check_answers(served, served.port, instance, prefix=ROUTE_PREFIX)
                break
            except (RuntimeError, httpx.HTTPError) as err:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the floor app did not answer: {err}") from None
                time.sleep(1.0)
        log("the floor app answers")
        yield
    finally:
        deploy_models_api(settings, config)


def litserve_server(served: Served, nice: int):
    """``bench._litserve_baseline`` serving ``served``'s ONNX file, with its key."""
    args = [
        *("--onnx", str(served.onnx), "--input-shape", *map(str, served.input_shape)),
        *("--threads", str(served.threads), "--model", served.model),
        *("--version", str(served.version)),
    ]
    env = {"LIT_SERVER_API_KEY": served.key}
    return server("", *args, nice=nice, module="bench._litserve_baseline", env=env)


def add_load_args(
    parser: argparse.ArgumentParser, concurrency: int, litserve: bool = False
) -> None:
    """The load and cluster options both benchmarks take (``litserve``: the LitServe
    baseline too, on unless ``--no-litserve``)."""
    if litserve:
        parser.add_argument("--no-litserve", dest="litserve", action="store_false")
        parser.add_argument(
            "--floor", action="store_true", help="also the baseline's handler in a Serve replica"
        )
    else:
        parser.set_defaults(litserve=False, floor=False)
    parser.add_argument("--concurrency", type=int, default=concurrency, help="in flight")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per segment")
    parser.add_argument("--rounds", type=int, default=2, help="ours/baseline alternations")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds per side, first")
    parser.add_argument("--no-match-nice", dest="match_nice", action="store_false")
    parser.add_argument("--existing", action="store_true", help="use the running cluster")


def baseline_args(served: Served) -> list[str]:
    """Command-line arguments of the ``baseline`` server for ``served``."""
    return [
        *("--onnx", str(served.onnx), "--keys-uri", served.keys_uri),
        *("--model", served.model, "--version", str(served.version)),
        *("--input-shape", *map(str, served.input_shape), "--threads", str(served.threads)),
    ]


def _main() -> None:
    parser = argparse.ArgumentParser(description="a server for the serving benchmarks")
    parser.add_argument("mode", choices=("baseline", "canned"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--keys-uri")
    parser.add_argument("--model")
    parser.add_argument("--version", type=int)
    parser.add_argument("--input-shape", type=int, nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "canned":
        serve_canned(args.port)
        return
    import uvicorn

    app = baseline_app(
        args.onnx, args.keys_uri, args.model, args.version, args.input_shape, args.threads
    )
    # One worker process, uvicorn's defaults (uvloop and httptools when installed), no
    # access log (a log line per request would only slow the baseline down).
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    _main()
