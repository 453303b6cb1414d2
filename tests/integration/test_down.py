"""`aimass down` leaves no process of its cluster behind (and touches no other)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
from ray._common.test_utils import wait_for_condition

from cluster import local
from cluster.cli.deploy import deploy_models_api
from cluster.local import free_port
from cluster.settings import Settings

CORE = ("gcs_server", "raylet")  # a cluster's own processes, there as long as it runs


def private_settings(home: Path) -> Settings:
    return Settings(
        home=home,
        token_path=home / "token",
        gcs_port=free_port(),
        dashboard_port=free_port(),
        serve_port=free_port(),
        prometheus_port=free_port(),  # its Prometheus is one of the processes down must end
    )


def cluster_tree(settings: Settings) -> dict[int, float]:
    """What the cluster runs, found apart from ``local.cluster_processes``: the processes
    whose command line names its temp dir (GCS, raylet, dashboard, monitors), all their
    descendants, and those carrying its mark; pid -> start time."""
    named = re.compile(rf"{re.escape(str(settings.ray_temp_dir))}(?!\d)")
    mark = f"{local.CLUSTER_MARK_ENV}={settings.ray_temp_dir}".encode()
    tree: dict[int, float] = {}
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                marked = mark in f.read().split(b"\0")
        except OSError:
            marked = False
        if marked or named.search(" ".join(proc.info["cmdline"] or [])):
            tree[proc.pid] = proc.info["create_time"]
            try:
                tree |= {c.pid: c.create_time() for c in proc.children(recursive=True)}
            except psutil.Error:
                continue
    tree.pop(os.getpid(), None)
    return tree


def still_running(tree: dict[int, float]) -> list[str]:
    left = []
    for pid, started in tree.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {proc.name()}")
        except psutil.NoSuchProcess:
            continue
    return left


def test_down_leaves_no_process_of_the_cluster(tmp_path, local_cluster):
    # A second, short-lived cluster beside the session's one.
    other = private_settings(tmp_path)
    assert local.up(other).started
    try:
        ours = local.cluster_processes(other)
        assert len(ours) >= 4  # gcs, raylet, dashboard, agents (renamed ray::… processes)
        session = {p.pid for p in local.cluster_processes(local_cluster)}
        assert session and not session & {p.pid for p in ours}
        tree = cluster_tree(other)
    finally:
        assert local.down(other) >= 4
    assert not still_running(tree), "processes of the stopped cluster still running"
    assert local.is_running(local_cluster), "the session's cluster must be untouched"


def test_down_after_a_job_and_the_model_api_leaves_nothing(tmp_path, local_cluster, repo_root):
    """The state `aimass down` met when it left Ray's agents running: a job that ran, one
    still running and Serve's model API deployed. Renamed, the agents hide the cluster's
    mark; once their raylet is gone they can hang in calls to the dead GCS, deaf to TERM."""
    other = private_settings(tmp_path)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    submit = [ray_cli, "job", "submit", "--address", other.dashboard_url, "--working-dir", "."]
    env = {**os.environ, **other.ray_client_env()}
    core = {p.pid for p in local.cluster_processes(local_cluster) if p.name() in CORE}
    tree, names = {}, set()
    assert local.up(other).started
    try:
        ingest = [*submit, "--", "python", "-m", "jobs.ingest", "--dataset", "digits"]
        done = subprocess.run(
            ingest, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        sleeper = [*submit, "--no-wait", "--", "python", "-c", "import time; time.sleep(600)"]
        subprocess.run(sleeper, cwd=repo_root, env=env, check=True, capture_output=True)
        deploy_models_api(other)
        api = httpx.Client(base_url=other.dashboard_url, headers=local.auth_headers(other))

        def working() -> bool:
            apps = api.get("/api/serve/applications/").json().get("applications") or {}
            jobs = api.get("/api/jobs/").json()
            return apps.get("models", {}).get("status") == "RUNNING" and any(
                j["status"] == "RUNNING" for j in jobs
            )

        wait_for_condition(working, timeout=180, retry_interval_ms=1000)
        tree = cluster_tree(other)
        names = {p.info["name"] for p in psutil.process_iter(["name"]) if p.pid in tree}
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
    finally:
        stopped = local.down(other)
    print(f"down stopped {stopped} processes; the cluster ran {len(tree)} ({sorted(names)})")
    assert not still_running(tree), still_running(tree)
    assert local.cluster_processes(other) == []
    assert core <= {p.pid for p in local.cluster_processes(local_cluster)}
    assert local.is_running(local_cluster), "the session's cluster must be untouched"


def test_a_session_record_left_behind_names_nothing(tmp_path):
    """A record whose cluster died without `down` names a session id the system may give to
    anything since: here, this test's own session. Without a process of the cluster in
    it, nothing of it is the cluster's; a record others could have written is not read."""
    settings = private_settings(tmp_path)
    local._record_session(settings, os.getsid(0))
    try:
        assert local._recorded_session(settings) == os.getsid(0)
        assert local.cluster_processes(settings) == []
        local._session_file(settings).chmod(0o666)
        assert local._recorded_session(settings) is None
    finally:
        shutil.rmtree(settings.ray_temp_dir)
