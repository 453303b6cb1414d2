"""`aimass down` leaves no process of its cluster behind (and touches no other)."""

import os

import psutil

from cluster import local
from cluster.local import free_port
from cluster.settings import Settings


def test_down_leaves_no_process_of_the_cluster(tmp_path, local_cluster):
    # A second, short-lived cluster beside the session's one.
    other = Settings(
        home=tmp_path,
        token_path=tmp_path / "token",
        gcs_port=free_port(),
        dashboard_port=free_port(),
        serve_port=free_port(),
    )
    assert local.up(other).started
    try:
        ours = local.cluster_processes(other)
        assert len(ours) >= 4  # gcs, raylet, dashboard, agents (renamed ray::… processes)
        session = {p.pid for p in local.cluster_processes(local_cluster)}
        assert session and not session & {p.pid for p in ours}
    finally:
        assert local.down(other) >= 4
    mark = f"{local.CLUSTER_MARK_ENV}={other.ray_temp_dir}".encode()
    left = []
    for proc in psutil.process_iter():
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0") and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc.pid)
        except OSError:
            continue
    assert not left, f"processes of the stopped cluster still running: {left}"
    assert local.is_running(local_cluster), "the session's cluster must be untouched"
    assert os.getpid() not in left
