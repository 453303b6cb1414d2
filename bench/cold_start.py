"""How long a user waits: `serve deploy` to the first 200, and a new version's canary to
its first answer under traffic.

    .venv/bin/python -m bench.cold_start              # ~4 min, plus ~3 min to train once
    .venv/bin/python -m bench.cold_start --repeats 1  # a quick smoke run

On a private cluster (temp home, free ports; a cold start needs a cluster of its own), with
a ``digits`` champion (ingested and trained as jobs when the registry lacks one):

- ``deploy_s``: from running ``serve deploy`` on ``serve_apps/serve_config.yaml`` (the
  model API not deployed) to the first 200 of ``POST /v1/models/digits/predict`` with an
  API key, polled every 50 ms; in each run ``cli_s`` (the command returned) and
  ``running_s`` (Serve reports the application RUNNING) say where the time went. The
  first deploy starts Serve itself (controller, proxy) on a cluster that never ran it;
  ``--repeats`` more runs delete the application (``serve shutdown``) and deploy it
  again: Ray's worker processes and the OS file cache are warm then, as on a cluster an
  operator redeploys.
- ``canary_s``: a copy of the champion is registered as a new version and
  ``python -m jobs.release --candidate N --steps 50,100`` submitted (the Jobs API, as
  ``ray job submit`` does) under steady traffic of new end users; from the submission to the
  first answer served by the new version. ``release_s``: to the job's end (promoted), and
  ``failed_requests`` during it (0 expected).
- baseline: plain FastAPI + uvicorn serving the same ONNX file with the same handler
  (``bench._serve_load.baseline_app``), from starting its process to its first 200.

``ratio`` = ours ``deploy_s`` (median) / the baseline's start: what Serve's distributed
start costs over one process. No goal is set (PERFORMANCE.md: reported, not gated).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from bench import _serve_load as sl
from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results

NAME = "cold_start"
MODEL = "digits"
TRAIN = "--config digits_cnn_smoke"
POLL_S = 0.05
ONE_DIGIT = {"instances": [[0.0, 0.0, 5.0, 13.0] + [4.0] * 60]}
RELEASE = "--steps 50,100 --min-step-s 2 --min-requests 20 --latency-slack-ms 2000"


def first_200(url: str, key: str, timeout_s: float = 300) -> float:
    """Poll ``url`` (a predict route) until it answers 200; the monotonic time it did."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                if http.post(url, json=ONE_DIGIT).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(POLL_S)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def serve_shutdown(settings) -> None:
    """Delete every Serve application (``serve shutdown``) and wait until the route is gone."""
    serve_cli = str(Path(sys.executable).with_name("serve"))
    env = {**os.environ, **settings.ray_client_env()}
    cmd = [serve_cli, "shutdown", "-y", "--address", settings.dashboard_url]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(settings.serve_url, timeout=1)
        except httpx.HTTPError:
            return  # the proxy is gone
        time.sleep(0.2)
    raise TimeoutError("Serve's proxy still answers after `serve shutdown`")


def app_running(settings) -> bool:
    """Whether Serve reports the model API RUNNING (its REST API, as the dashboard reads it)."""
    try:
        return sl.models_app(settings, timeout_s=5)["status"] == "RUNNING"
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return False


def timed_deploy(settings, url: str, key: str) -> dict:
    """One deploy, and where its time went: the `serve deploy` command itself, Serve's
    report of the application RUNNING (polled every 0.25 s beside the predict polls), and
    the first 200 (the champion's package fetched and its ONNX session opened on it)."""
    from cluster.cli.deploy import deploy_models_api

    running: list[float] = []

    def watch() -> None:
        while not running and time.monotonic() - start < 300:
            if app_running(settings):
                running.append(time.monotonic())
            time.sleep(0.25)

    start = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deploy_models_api(settings)
    returned = time.monotonic()
    answered = first_200(url, key)
    watcher.join(30)
    return {
        "deploy_s": round(answered - start, 2),
        "cli_s": round(returned - start, 2),
        "running_s": round(running[0] - start, 2) if running else None,
    }


class Traffic:
    """Two clients posting one digit as a new end user each time; each answer's version."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.answers: list[tuple[float, int | None]] = []  # (monotonic time, version or None)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {self.key}"}, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    r = http.post(self.url, json=ONE_DIGIT, headers={"X-User-ID": uuid.uuid4().hex})
                    version = r.json()["version"] if r.status_code == 200 else None
                except (httpx.HTTPError, ValueError, KeyError):
                    version = None
                self.answers.append((time.monotonic(), version))

    def first(self, version: int, since: float) -> float | None:
        return next((t for t, v in list(self.answers) if v == version and t >= since), None)


def new_version(settings, registry, folder: Path) -> int:
    """A new version with the champion's very package (it agrees with the champion)."""
    champion = registry.resolve(f"{MODEL}@champion")
    pkg = registry.fetch(champion, folder)
    run_id = registry.client.create_run(registry.experiment("bench-cold-start")).info.run_id
    return registry.register(MODEL, run_id, pkg).version


def timed_canary(settings, registry, url: str, key: str, folder: Path) -> dict:
    from ray.job_submission import JobStatus, JobSubmissionClient

    candidate = new_version(settings, registry, folder)
    client = JobSubmissionClient(settings.dashboard_url)
    entrypoint = f"python -m jobs.release --model {MODEL} --candidate {candidate} {RELEASE}"
    with Traffic(url, key) as traffic:
        time.sleep(2.0)  # steady traffic before the release starts
        start = time.monotonic()
        job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(sl.REPO)})
        log(f"submitted {job}: {entrypoint}")
        while not (status := client.get_job_status(job)).is_terminal():
            if time.monotonic() - start > 600:
                client.stop_job(job)
                raise TimeoutError("the release ran past 600 s")
            time.sleep(0.2)
        ended = time.monotonic()
        first = traffic.first(candidate, start)
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"the release ended {status}:\n{client.get_job_logs(job)[-3000:]}")
    during = [v for t, v in traffic.answers if t >= start]
    return {
        "candidate": candidate,
        "canary_s": round(first - start, 2) if first else None,
        "release_s": round(ended - start, 2),
        "requests": len(during),
        "failed_requests": sum(v is None for v in during),
    }


def baseline_start(served: sl.Served) -> float:
    """Seconds from starting the plain FastAPI server to its first 200."""
    start = time.monotonic()
    with sl.server("baseline", *sl.baseline_args(served)) as (port, _):
        url = f"http://{sl.HOST}:{port}/v1/models/{served.model}/predict"
        return first_200(url, served.key) - start


def measure(settings, repeats: int, folder: Path) -> dict:
    from models.registry import Registry
    from serve_apps.keys import KeyStore, keys_uri

    registry = Registry.from_settings(settings)
    champion = sl.ensure_champion(settings, registry, MODEL, TRAIN)
    uri = keys_uri(settings.storage_root)
    key, record = KeyStore(uri).create("bench-cold-start")
    url = f"{settings.serve_url}/v1/models/{MODEL}/predict"
    deploys = []
    for i in range(1 + repeats):
        if i:
            serve_shutdown(settings)
        deploys.append(timed_deploy(settings, url, key))
        log(f"deploy {i + 1}/{1 + repeats}: first 200 after {deploys[-1]['deploy_s']} s")
    canary = timed_canary(settings, registry, url, key, folder / "candidate")
    log(f"canary: first answer {canary['canary_s']} s after submitting the release")
    served = sl.served_version(settings, registry, champion, folder / "champion", key, record.id)
    baseline = [baseline_start(served) for _ in range(1 + repeats)]
    sl.revoke(served)
    return {
        "deploys": deploys,
        "canary": canary,
        "baseline_start_s": [round(b, 2) for b in baseline],
    }


def report(m: dict) -> dict:
    first, *again = [d["deploy_s"] for d in m["deploys"]]
    ours = statistics.median([first, *again])
    base = statistics.median(m["baseline_start_s"])
    return {
        "name": NAME,
        "ratio": round(ours / base, 2),
        "goal": "reported (no goal set)",
        "goal_met": None,
        "deploy_s": first,
        "redeploy_s": statistics.median(again) if again else None,
        "canary_s": m["canary"]["canary_s"],
        "release_s": m["canary"]["release_s"],
        "failed_requests": m["canary"]["failed_requests"],
        **m,
        "serve_env": sl.serve_env(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="redeploys after the first")
    args = parser.parse_args(argv)
    with cluster(existing=False) as settings, tempfile.TemporaryDirectory() as tmp:
        m = measure(settings, args.repeats, Path(tmp))
    row = emit(report(m))
    log(f"wrote {write_results(NAME, [row])}")


if __name__ == "__main__":
    main()
