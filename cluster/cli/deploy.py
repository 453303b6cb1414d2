"""Deploy the model API with `serve deploy` and wait until a given version answers."""

from __future__ import annotations

import importlib.resources
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from cluster.exceptions import ClusterError
from cluster.settings import Settings

# The package data of serve_apps (pyproject.toml ships it): found wherever it is installed.
SERVE_CONFIG = Path(str(importlib.resources.files("serve_apps") / "serve_config.yaml"))


def rendered_config(settings: Settings, source: Path = SERVE_CONFIG) -> dict:
    """serve_config.yaml with the HTTP host and port taken from the settings."""
    config = yaml.safe_load(source.read_text())
    config.setdefault("http_options", {}).update(host=settings.host, port=settings.serve_port)
    return config


def deploy_models_api(settings: Settings, config: dict | None = None) -> None:
    """Run `serve deploy` on ``config`` (default: the rendered serve_config.yaml)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config or rendered_config(settings), f)
    serve_cli = str(Path(sys.executable).with_name("serve"))
    env = {**os.environ, **settings.ray_client_env()}
    cmd = [serve_cli, "deploy", f.name, "--address", settings.dashboard_url]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    os.unlink(f.name)
    if proc.returncode != 0:
        raise ClusterError(f"`serve deploy` failed:\n{proc.stderr[-2000:]}", settings.dashboard_url)


def wait_for_version(
    settings: Settings, key: str, model: str, version: int, timeout_s: float = 240
) -> None:
    """Poll GET /v1/models until ``model`` answers at ``version``."""
    deadline, last = time.monotonic() + timeout_s, "no answer yet"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{settings.serve_url}/v1/models", headers={"X-API-Key": key}, timeout=5)
            if r.status_code == 200:
                served = {m["name"]: m["version"] for m in r.json()["models"]}
                if served.get(model) == version:
                    return
                last = f"serving {served or 'nothing yet'}"
            else:
                last = f"HTTP {r.status_code}"
        except httpx.HTTPError as err:
            last = type(err).__name__
        time.sleep(1.0)
    raise ClusterError(f"{model} v{version} was not served within {timeout_s:.0f} s ({last}).")


def cluster_cpus_by_datacenter(settings: Settings) -> dict[str, float]:
    """CPUs of each datacenter's live nodes, from the State API (no driver needed)."""
    from ray.util.state import list_nodes

    from cluster.cli.placement_check import cpus_by_datacenter

    nodes = list_nodes(address=settings.dashboard_url, detail=True, limit=10_000)
    return cpus_by_datacenter(
        [
            {"Alive": n.state == "ALIVE", "Labels": n.labels, "Resources": n.resources_total}
            for n in nodes
        ]
    )


def checked_deploy(settings: Settings, source: Path, timeout_s: float = 300) -> dict:
    """``aimass deploy``: check ``source`` against the cluster's datacenters, ``serve
    deploy`` it, and wait until every application runs; Serve's own status message when
    one fails to deploy. Returns the applications' statuses."""
    from cluster.cli.placement_check import check_placement

    config = rendered_config(settings, source)
    problems = check_placement(config, cluster_cpus_by_datacenter(settings))
    if problems:
        raise ClusterError(
            f"{source} cannot be placed on this cluster:\n- " + "\n- ".join(problems)
        )
    deploy_models_api(settings, config)
    return wait_for_applications(
        settings, [app["name"] for app in config["applications"]], timeout_s
    )


def wait_for_applications(settings: Settings, names: list[str], timeout_s: float) -> dict:
    """Poll Serve until the applications run; ClusterError with Serve's message if one
    failed to deploy or they did not run in time."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(settings.dashboard_url)
    deadline, statuses = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        apps = client.get_serve_details().get("applications") or {}
        statuses = {name: apps.get(name, {}).get("status", "NOT_STARTED") for name in names}
        failed = [n for n, s in statuses.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            message = apps[failed[0]].get("message", "")
            raise ClusterError(f"Application {failed[0]!r} failed to deploy: {message[-2000:]}")
        if all(s == "RUNNING" for s in statuses.values()):
            return statuses
        time.sleep(1.0)
    raise ClusterError(f"Applications did not run within {timeout_s:.0f} s: {statuses}")
