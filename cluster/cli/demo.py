"""``make demo``: the whole path on the embedded cluster, ending in a report.

ingest -> train (Ray Train + DeepSpeed) -> register (MLflow) -> deploy (``serve deploy``)
-> serve -> query. Jobs go through the Jobs API exactly as ``ray job submit`` sends them;
the accuracy reported is computed from the HTTP responses to the held-out test split.
It leaves the cluster and the service running; ``make down`` stops them.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from rich.panel import Panel

from cluster import local
from cluster.cli.console import make_console
from cluster.cli.deploy import deploy_models_api, wait_for_version
from cluster.cli.jobs_client import run_job
from cluster.cli.query import query_split
from cluster.settings import Settings, get_settings
from models.dataset import dataset_uri, read_manifest
from models.registry import Registry
from serve_apps.keys import KeyStore, keys_uri

REPO = Path(__file__).resolve().parents[2]  # the working dir the jobs upload
console = make_console()


def demo_key(settings: Settings) -> str:
    """The demo's API key: kept (mode 0600) under home, recreated if it stopped working."""
    path = settings.home / "demo_api_key"
    store = KeyStore(keys_uri(settings.storage_root), ttl_s=0)
    if path.exists():
        key = path.read_text().strip()
        try:
            store.authenticate(key)
            return key
        except Exception:
            pass  # revoked or from an older store: make a new one
    key, _ = store.create("demo", ("predict",))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def echo(line: str) -> None:
    """A job's progress line, verbatim ("[train] ..." is not rich markup)."""
    console.print(line, markup=False, highlight=False)


def step(n: int, total: int, text: str) -> None:
    console.rule(f"[bold cyan][{n}/{total}] {text}", align="left")


def main() -> None:
    settings = get_settings()
    # Ray's SDKs log every upload at INFO; the demo shows its own steps instead.
    logging.getLogger("ray").setLevel(logging.ERROR)
    local.connect_clients(settings)
    t0 = time.monotonic()
    step(1, 6, "starting the local Ray cluster (token auth on)")
    info = local.up(settings)
    console.print(f"{'started' if info.started else 'already running'}: {info.dashboard_url}")
    key = demo_key(settings)
    step(2, 6, "ingest: digits -> Parquet shards + manifest")
    run_job(settings, "python -m jobs.ingest --dataset digits", REPO, echo)
    step(3, 6, "train: Ray Train + DeepSpeed ZeRO-2 on 2 workers, then register in MLflow")
    run_job(settings, "python -m jobs.train --config digits_cnn", REPO, echo)
    registry = Registry.from_settings(settings)
    champion = registry.resolve("digits@champion")
    step(4, 6, f"deploy: serve deploy serve_apps/serve_config.yaml (digits v{champion.version})")
    deploy_models_api(settings)
    wait_for_version(settings, key, "digits", champion.version)
    step(5, 6, "query: the held-out test split over HTTP")
    manifest = read_manifest(dataset_uri(settings.storage_root, "digits"))
    x_test, y_test = manifest.load_split("test")
    result = query_split(settings.serve_url, key, "digits", x_test, y_test)
    step(6, 6, "report")
    report(settings, result, champion.version, time.monotonic() - t0, info.prometheus_url)
    sample = ", ".join(str(int(v)) for v in x_test[0])
    console.print(f"Try it (a test image of a {y_test[0]}):")
    print(
        f"curl -s -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        f"-d '{{\"instances\": [[{sample}]]}}' {settings.serve_url}/v1/models/digits/predict"
    )


def report(
    settings: Settings, result, version: int, elapsed: float, prometheus: str | None
) -> None:
    db = re.sub(r"^sqlite:///", "", settings.mlflow_uri)
    lines = [
        f"served held-out accuracy  [bold]{result.accuracy:.4f}[/]  "
        f"({result.correct}/{result.total} test images, from the HTTP responses)",
        f"latency                   p50 {result.p50_ms:.1f} ms   p99 {result.p99_ms:.1f} ms   "
        f"({result.total} requests, {result.concurrency} concurrent)",
        f"model serving             digits version {version} (alias champion)",
        f"Ray dashboard             {settings.dashboard_url}  (token: {settings.token_path})",
        f"MLflow UI                 .venv/bin/mlflow ui --backend-store-uri sqlite:///{db} "
        "--host 127.0.0.1 --port 5000",
        f"Prometheus                {prometheus}  (alerts: .venv/bin/aimass alerts)"
        if prometheus
        else "Prometheus                not installed: `make prometheus`, then `make down demo`",
        f"demo API key              {settings.home / 'demo_api_key'}",
        f"took                      {elapsed:.0f} s; `make down` stops the cluster",
    ]
    console.print(Panel("\n".join(lines), title="aimass demo", expand=False))


if __name__ == "__main__":
    main()
