"""The registry against a real MLflow tracking server with proxied artifacts (as on a cluster).

The server runs here on loopback with a SQLite store and ``--artifacts-destination``; the
client only knows its URL. Versions are uploaded and fetched through the server's artifact
proxy (``mlflow-artifacts:/…``), never through a path the client could read directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from ray._common.test_utils import wait_for_condition

from cluster.cli.aimass import main
from cluster.local import free_port
from models import lineage, package
from models.refs import CHAMPION, GIT_TAG
from models.registry import Registry

START_TIMEOUT_S = 120
PROXIED_ROOT = "mlflow-artifacts:/aimass"


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    def up_or_exited() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False  # not listening yet

    try:
        wait_for_condition(up_or_exited, timeout=START_TIMEOUT_S, retry_interval_ms=250)
    except RuntimeError:
        pytest.fail(f"mlflow server not up in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
    if proc.poll() is not None:
        pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    # `mlflow server` runs uvicorn as a child: stop the whole process group started here.
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """A tracking server on a free loopback port; yields (url, its artifacts destination)."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port, destination, log = free_port(), tmp / "artifacts", tmp / "server.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{tmp / 'db.sqlite'}",
        "--artifacts-destination", str(destination),
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",  # a test needs no more, and the machine has few cores
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc, log)
        yield url, destination
    finally:
        _stop(proc)
    assert proc.returncode is not None, "the tracking server did not stop"


def test_register_promote_fetch_and_history_through_the_server(
    tracking_server, tmp_path, monkeypatch, capsys, make_package
):
    url, destination = tracking_server
    registry = Registry(url, artifact_root=PROXIED_ROOT)
    experiment = registry.experiment("digits")
    assert registry.client.get_experiment(experiment).artifact_location == f"{PROXIED_ROOT}/digits"
    run_id = registry.client.create_run(experiment).info.run_id

    info = registry.register("digits", run_id, make_package("pkg"), tags={GIT_TAG: "abc"})
    assert info.source == f"{PROXIED_ROOT}/digits/{run_id}/artifacts/model"
    assert info.tags[GIT_TAG] == "abc" and info.manifest_sha256
    # the upload went through the server into its destination
    stored = destination / "aimass" / "digits" / run_id / "artifacts" / "model"
    assert (stored / package.ONNX_FILE).is_file()

    event = registry.promote("digits", info.version, reason="first through the server")
    assert registry.resolve("digits").version == info.version
    folder = registry.fetch(registry.resolve(f"digits@{CHAMPION}"), tmp_path / "fetched")
    assert folder.is_relative_to(tmp_path / "fetched")  # downloaded, verified on the way
    assert package.PackageConfig.read(folder).metrics == {"accuracy": 0.9}
    assert registry.alias_history("digits") == [event]
    assert lineage.diff(registry, "digits@1", "digits@champion")["metrics"] == {
        "accuracy": (0.9, 0.9)
    }

    # the CLI, pointed at the server by the settings
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIMASS_TRACKING_URI", url)
    main(["models", "history", "digits"])
    assert "first through" in capsys.readouterr().out  # (the table wraps long reasons)


def test_a_local_artifact_root_is_left_to_the_server(tracking_server, tmp_path, make_package):
    """A client-side folder means nothing to the server or other nodes: its default applies."""
    url, destination = tracking_server
    local = tmp_path / "client-side"
    registry = Registry(url, artifact_root=str(local))
    experiment = registry.experiment("iris")
    assert registry.client.get_experiment(experiment).artifact_location.startswith(
        "mlflow-artifacts:/"
    )
    run_id = registry.client.create_run(experiment).info.run_id
    info = registry.register("iris", run_id, make_package("pkg"))
    assert not local.exists()
    assert list(destination.rglob(f"{run_id}/artifacts/model/{package.ONNX_FILE}"))
    assert registry.fetch(info).is_dir()
