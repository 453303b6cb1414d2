"""The embedded cluster as `aimass up` starts it: token auth, labels, loopback, idempotence."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from cluster import local
from cluster.topology import REGION_LABEL, ZONE_LABEL


def test_token_file_is_private(local_cluster):
    mode = stat.S_IMODE(local_cluster.token_path.stat().st_mode)
    assert mode == 0o600


def test_jobs_api_needs_the_token(local_cluster):
    url = f"{local_cluster.dashboard_url}/api/jobs/"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + "0" * 64}
    assert httpx.get(url, headers=wrong, timeout=10).status_code in (401, 403)
    assert httpx.get(url, headers=local.auth_headers(local_cluster), timeout=10).status_code == 200


def test_ray_job_submit_without_the_token_fails(local_cluster, tmp_path):
    wrong_token = tmp_path / "wrong"
    wrong_token.write_text("f" * 64)
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(wrong_token), "RAY_AUTH_MODE": "token"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.run(
        [ray_cli, "job", "submit", "--address", local_cluster.dashboard_url, "--", "echo", "hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "AuthenticationError" in proc.stderr, proc.stderr[-2000:]


def test_head_carries_the_default_datacenter_labels(local_cluster):
    from ray.util.state import list_nodes

    (node,) = list_nodes(address=local_cluster.dashboard_url, detail=True)
    assert node.labels[REGION_LABEL] == local_cluster.region
    assert node.labels[ZONE_LABEL] == local_cluster.zone
    assert node.node_ip == "127.0.0.1"


def test_up_is_idempotent_and_status_lists_the_node(local_cluster):
    assert local.up(local_cluster).started is False
    aimass = str(Path(sys.executable).with_name("aimass"))
    proc = subprocess.run([aimass, "status"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ALIVE" in proc.stdout and "availability-region" in proc.stdout


def test_down_finds_every_process_of_this_cluster_and_no_other(local_cluster):
    import ray

    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    ray.init(address=local_cluster.gcs_address, log_to_driver=False)
    try:
        probe = Probe.remote()
        worker_pid = ray.get(probe.pid.remote(), timeout=120)
        mine = {p.pid for p in local.cluster_processes(local_cluster)}
        # the actor's worker renames itself "ray::Probe": found through the cluster's mark
        assert worker_pid in mine
        assert os.getpid() not in mine and os.getppid() not in mine
        ray.kill(probe)
    finally:
        ray.shutdown()


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_every_cluster_service_listens_on_loopback_only(local_cluster):
    import psutil

    pids = {p.pid for p in local.cluster_processes(local_cluster)}
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }
    ports = {port for _, port in listening}
    assert {local_cluster.gcs_port, local_cluster.dashboard_port} <= ports
    assert {ip for ip, _ in listening} <= LOOPBACK, sorted(listening)
