"""The model path, once per session: ingest and train submitted with `ray job submit`
(the documented command), then `serve deploy`, on the shared local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.deploy import deploy_models_api, wait_for_version
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


def ray_job_submit(
    settings: Settings, repo: Path, *entrypoint: str, expect_ok: bool = True
) -> subprocess.CompletedProcess:
    """`ray job submit --address … --working-dir . -- <entrypoint>`, as the README says."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_cli, "job", "submit", "--address", settings.dashboard_url, "--working-dir", "."]
    proc = subprocess.run(
        [*cmd, "--", *entrypoint],
        cwd=repo,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


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
    registry = Registry(local_cluster.mlflow_uri, f"{local_cluster.storage_root}/mlflow")
    version = registry.resolve("digits@champion").version
    deploy_models_api(local_cluster)
    wait_for_version(local_cluster, key, "digits", version)
    return Served(local_cluster, key, version, registry)
