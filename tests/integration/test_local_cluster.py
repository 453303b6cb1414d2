"""The embedded cluster as `aimass up` starts it: token auth, labels, loopback, idempotence."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cluster import local
from cluster.topology import REGION_LABEL, ZONE_LABEL


def test_token_file_is_private(local_cluster):
    mode = stat.S_IMODE(local_cluster.token_path.stat().st_mode)
    assert mode == 0o600


def test_jobs_api_needs_the_token(local_cluster):
    url = f"{local_cluster.dashboard_url}/api/jobs/"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + "0" * 64}
    assert httpx.get(url, headers=wrong, timeout=10).status_code == 401
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
    assert "401" in proc.stdout + proc.stderr or "nauthorized" in proc.stdout + proc.stderr


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


def test_down_would_stop_only_this_clusters_processes(local_cluster):
    mine = local.cluster_processes(local_cluster)
    assert mine, "the running head's processes must be found"
    marker = str(local_cluster.ray_temp_dir)
    gcs = local_cluster.gcs_address
    for proc in mine:
        cmdline = " ".join(proc.cmdline())
        assert marker in cmdline or gcs in cmdline


@pytest.mark.parametrize("port_field", ["gcs_port", "dashboard_port"])
def test_services_listen_on_loopback_only(local_cluster, port_field):
    import psutil

    port = getattr(local_cluster, port_field)
    listening = [
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening and set(listening) <= {"127.0.0.1"}
