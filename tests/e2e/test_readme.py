"""The README's own shell blocks, run as a new user runs them, so the README cannot drift
from what works: each block in a fresh shell (only PATH and HOME, then the README's
`source .venv/bin/activate`), in the repository root, against the cluster the README's
`aimass up` starts. Only the address, the ports and the home differ from the text: a
private cluster beside any other (its AIMASS_*_PORT variables, as the README's Settings
say, and the Serve port in a copy of serve_config.yaml), in a fresh HOME.

The cheap blocks run here (up and status, alerts, ingest and train, serve deploy, keys and curl,
models list/show/history); the other e2e modules submit the expensive job commands
through ``ray_job_submit``, from the same kind of shell.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from ray._common.test_utils import wait_for_condition

from cluster import local
from cluster.cli.deploy import wait_for_version
from cluster.settings import Settings
from serve_apps.keys import KeyStore, keys_uri

# What the README's commands name, and what this module's cluster uses instead.
README_DASHBOARD, README_SERVE = "http://127.0.0.1:8265", "http://127.0.0.1:8000"
README_SERVE_CONFIG = "serve_apps/serve_config.yaml"
README_PROMETHEUS = "http://127.0.0.1:9190"


@dataclass(frozen=True)
class UserShell:
    """A new user's shell in the repository, pointed at the private cluster."""

    run_in_shell: Callable[..., subprocess.CompletedProcess]
    repo: Path
    home: Path
    settings: Settings
    serve_config: Path  # serve_config.yaml with the private Serve port

    @property
    def ports(self) -> dict[str, str]:
        return {
            "AIMASS_GCS_PORT": str(self.settings.gcs_port),
            "AIMASS_DASHBOARD_PORT": str(self.settings.dashboard_port),
            "AIMASS_SERVE_PORT": str(self.settings.serve_port),
            "AIMASS_PROMETHEUS_PORT": str(self.settings.prometheus_port),
        }

    def block(self, line: str) -> str:
        """The one bash block of the README with a line that contains ``line``."""
        blocks = re.findall(
            r"^```bash\n(.*?)^```", (self.repo / "README.md").read_text(), re.S | re.M
        )
        found = [b for b in blocks if any(line in text for text in b.splitlines())]
        assert len(found) == 1, f"{len(found)} bash blocks of the README contain {line!r}"
        return found[0]

    def run(self, script: str) -> subprocess.CompletedProcess:
        """Run README text, stopping at the first failing command; only the address, the
        ports and the path of the Serve config are substituted."""
        script = (
            script.replace(README_DASHBOARD, self.settings.dashboard_url)
            .replace(README_SERVE, self.settings.serve_url)
            .replace(README_SERVE_CONFIG, str(self.serve_config))
            .replace(README_PROMETHEUS, f"http://127.0.0.1:{self.settings.prometheus_port}")
        )
        proc = self.run_in_shell(f"set -eo pipefail\n{script}", self.home, self.repo, self.ports)
        assert proc.returncode == 0, f"{script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory, repo_root: Path, user_shell):
    """A new user's shell: a fresh HOME and free ports. The cluster its blocks start is
    stopped after the module, with `aimass down`."""
    home = tmp_path_factory.mktemp("readme-home")
    if (Path.home() / ".cache").is_dir():  # the user's caches: DeepSpeed's JIT-built op
        (home / ".cache").symlink_to(Path.home() / ".cache")
    settings = Settings(
        home=home / ".aimass",  # the defaults under that HOME, as a new user has them
        token_path=home / ".ray" / "auth_token",
        gcs_port=local.free_port(),
        dashboard_port=local.free_port(),
        serve_port=local.free_port(),
        prometheus_port=local.free_port(),
    )
    config = (repo_root / README_SERVE_CONFIG).read_text()
    config, n = re.subn(r"(?m)^(\s+port:\s*)8000\b", rf"\g<1>{settings.serve_port}", config)
    assert n == 1, "serve_config.yaml's http_options.port is no longer 8000: update this test"
    serve_config = tmp_path_factory.mktemp("readme-serve") / "serve_config.yaml"
    serve_config.write_text(config)
    shell = UserShell(user_shell, repo_root, home, settings, serve_config)
    try:
        yield shell
    finally:
        stopped = user_shell(".venv/bin/aimass down", home, repo_root, shell.ports)
        local.down(settings)  # had that failed; 0 when nothing is left
        shutil.rmtree(settings.ray_temp_dir, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture(scope="module")
def started(shell: UserShell) -> str:
    """The README's `aimass up` block run; its output."""
    return shell.run(shell.block(".venv/bin/aimass up")).stdout


@pytest.fixture(scope="module")
def trained(shell: UserShell, started: str) -> str:
    """The README's job block (ingest digits, train digits_cnn) run; its output."""
    return shell.run(shell.block("jobs.ingest --dataset digits")).stdout


@pytest.fixture(scope="module")
def deployed(shell: UserShell, trained: str) -> UserShell:
    """The README's `serve deploy` block run, and the trained champion answering."""
    shell.run(shell.block("serve deploy"))
    version = int(re.search(r"alias champion -> digits version (\d+)", trained).group(1))
    key, _ = KeyStore(keys_uri(shell.settings.storage_root)).create("readme-probe")
    wait_for_version(shell.settings, key, "digits", version)
    return shell


def test_start_block_starts_the_cluster_and_shows_it(shell: UserShell, started: str):
    assert f"Started Ray head at {shell.settings.gcs_address}" in started, started
    assert "ALIVE" in started and "availability-region" in started, started
    assert (shell.home / ".ray" / "auth_token").is_file()  # where Ray's CLIs look for it


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="`make prometheus` installs it")
def test_alerts_block_reads_the_clusters_prometheus(shell: UserShell, started: str):
    assert f"metrics    http://127.0.0.1:{shell.settings.prometheus_port}" in started, started
    out = shell.run(shell.block("aimass alerts")).stdout
    assert "No alert pending or firing" in out or "Alerts" in out, out
    assert '"status":"success"' in out, out  # the curl of a PromQL query


def test_job_block_ingests_and_trains(trained: str):
    assert "[ingest] test: 360 rows" in trained, trained[-3000:]
    assert "[train] alias champion -> digits version" in trained, trained[-3000:]


def test_keys_and_curl_block(deployed: UserShell):
    # The block as written, then its key printed for the check that revoking it holds.
    out = deployed.run(deployed.block("aimass keys revoke") + 'echo "KEY=$KEY"\n').stdout
    assert '{"model":"digits","version":' in out and '"predictions":[0]' in out, out
    assert "my-app" in out and "Revoked key" in out and "50/s, burst 100" in out, out
    key = re.search(r"^KEY=(\S+)$", out, re.M).group(1)
    url = f"{deployed.settings.serve_url}/v1/models/digits/predict"
    body = {"instances": [[0.0] * 64]}

    def refused() -> bool:
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        return r.status_code == 403

    wait_for_condition(refused, timeout=30, retry_interval_ms=500)  # "within seconds"


def test_models_block_lists_shows_and_tells_the_history(shell: UserShell, trained: str):
    lines = [
        line
        for line in shell.block("aimass models list").splitlines()
        if re.match(r"aimass models (list|show|history) ", line)
    ]
    assert len(lines) == 4, lines
    out = shell.run("\n".join(lines) + "\n").stdout
    assert "digits" in out and "champion" in out and "History of digits@champion" in out, out


def test_shard_store_block_ingests_trains_and_evaluates_through_the_store(
    shell: UserShell, started: str
):
    out = shell.run(shell.block("data_source=shard_store")).stdout
    assert "[ingest] " in out and "synthetic" in out, out[-3000:]
    assert "shard_store" in out, out[-3000:]
    assert re.search(r"accuracy", out), out[-3000:]
