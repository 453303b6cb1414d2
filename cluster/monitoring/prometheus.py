"""The cluster's Prometheus: Debian's ``prometheus`` binary, started by ``aimass up``.

It scrapes every node through Ray's service-discovery file (rewritten by Ray as nodes come
and go), loads the alert rules of ``cluster.monitoring.alerts`` and listens on the cluster's
host only. The Ray head is started with ``RAY_PROMETHEUS_HOST`` pointing at it, so the
dashboard's metrics views read from it. Ray's own ``ray metrics launch-prometheus`` downloads
a binary at run time, which cannot work offline; the Debian package is installed by
``make`` (``make prometheus``) where the machine allows.

It runs with the cluster's mark in its environment, so ``aimass down`` ends it with the rest
of the cluster, and keeps its config, data and log under ``<home>/prometheus``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from cluster.exceptions import ClusterError
from cluster.monitoring import alerts
from cluster.settings import Settings

BINARY = "prometheus"
SERVICE_DISCOVERY_FILE = "prom_metrics_service_discovery.json"  # Ray's name for it
INSTALL_HINT = (
    "Prometheus is not installed, so the dashboard's metrics views stay empty and nothing "
    "alerts: `make prometheus` installs Debian's package (root + apt; or install "
    "`prometheus` 2.x on the PATH yourself), then `aimass down && aimass up`."
)
_READY_TIMEOUT_S = 30.0


def binary() -> str | None:
    """The Prometheus executable on the PATH, None when there is none."""
    return shutil.which(BINARY)


def enabled(settings: Settings) -> bool:
    """Whether ``up`` runs a Prometheus for this cluster: wanted and installed."""
    return settings.prometheus == "auto" and binary() is not None


def url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.prometheus_port}"


def folder(settings: Settings) -> Path:
    return settings.home / "prometheus"


def config(settings: Settings) -> dict:
    """prometheus.yml: Ray's nodes from its service-discovery file, and the alert rules."""
    interval = f"{settings.prometheus_scrape_s}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(folder(settings) / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "ray",
                # Re-read on every interval: Ray replaces the file inside its session folder
                # behind a link, which file watching does not see.
                "file_sd_configs": [
                    {
                        "files": [str(settings.ray_temp_dir / SERVICE_DISCOVERY_FILE)],
                        "refresh_interval": interval,
                    }
                ],
            }
        ],
    }


def write_config(settings: Settings) -> Path:
    """Write prometheus.yml and alerts.yml under ``<home>/prometheus``; the config's path."""
    home = folder(settings)
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "alerts.yml").write_text(
        alerts.render(
            settings.alert_window_s,
            settings.alert_for_s,
            settings.alert_p99_ms,
            settings.drift_alert_psi,
        )
    )
    path = home / "prometheus.yml"
    path.write_text(yaml.safe_dump(config(settings), sort_keys=False))
    return path


def running_config(settings: Settings) -> str | None:
    """The config file of the Prometheus answering on the cluster's port, None if none
    answers (yet)."""
    try:
        reply = httpx.get(f"{url(settings)}/api/v1/status/flags", timeout=2)
        return reply.json()["data"]["config.file"] if reply.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def is_ready(settings: Settings) -> bool:
    """Whether this cluster's Prometheus answers (not another one on the same port)."""
    found = running_config(settings)
    if found is not None and found != str(folder(settings) / "prometheus.yml"):
        raise ClusterError(
            f"Port {settings.prometheus_port} is another Prometheus's (config {found}): set "
            "AIMASS_PROMETHEUS_PORT to a free port for this cluster.",
            url(settings),
        )
    if found is None:
        return False
    try:
        return httpx.get(f"{url(settings)}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start(settings: Settings, env: dict[str, str]) -> bool:
    """Start Prometheus unless one answers already; wait until it is ready. Returns whether
    it was started. ``env`` is the cluster's environment (its mark included)."""
    if is_ready(settings):
        return False
    config_path = write_config(settings)
    home = folder(settings)
    command = [
        binary() or BINARY,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--storage.tsdb.retention.time={settings.prometheus_retention}",
        f"--web.listen-address={settings.host}:{settings.prometheus_port}",
    ]
    with open(home / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not is_ready(settings):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ClusterError(
                f"Prometheus did not start on port {settings.prometheus_port} (taken? set "
                f"AIMASS_PROMETHEUS_PORT); its log: {home / 'prometheus.log'}",
                url(settings),
            )
        time.sleep(0.2)
    return True


def head_env(settings: Settings) -> dict[str, str]:
    """What the Ray head's environment needs for the dashboard to read this Prometheus."""
    return {"RAY_PROMETHEUS_HOST": url(settings)} if enabled(settings) else {}


def node_targets(temp_dir: Path) -> list[str]:
    """The metrics endpoints of the cluster's nodes, from Ray's service-discovery file."""
    path = temp_dir / SERVICE_DISCOVERY_FILE
    if not path.exists():
        return []
    return [t for group in json.loads(path.read_text()) for t in group.get("targets", [])]


def scrape(targets: list[str], timeout_s: float = 2.0) -> list[str]:
    """The metrics pages of the targets that answer (a node just gone is skipped), read as
    Prometheus reads them."""
    pages = []
    for target in targets:
        try:
            r = httpx.get(f"http://{target}/metrics", timeout=timeout_s)
        except httpx.HTTPError:
            continue
        if r.status_code == 200:
            pages.append(r.text)
    return pages


def firing(settings: Settings) -> list[dict]:
    """The alerts Prometheus holds now (pending and firing), from ``/api/v1/alerts``."""
    reply = httpx.get(f"{url(settings)}/api/v1/alerts", timeout=5)
    reply.raise_for_status()
    return reply.json()["data"]["alerts"]
