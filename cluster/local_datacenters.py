"""Datacenters of the embedded local cluster: one raylet per datacenter, on this machine.

``aimass up --datacenters us-east,eu-west`` starts the head (``cluster.local.up``), then a
real Ray node per datacenter with ``ray start --address=<head>``: its own loopback address
(``127.0.0.11``, ``.12``…: all of 127.0.0.0/8 is this host's), its own CPUs, and its
datacenter as Ray's region and zone labels (``RAY_NODE_REGION`` / ``RAY_NODE_ZONE``). The
nodes inherit the cluster's mark, and name its GCS address on their command line, so
``aimass down`` stops them with the rest; ``stop`` ends one datacenter's node alone (a
datacenter lost), ``start`` brings it back.

Only the head's Serve proxy takes HTTP: proxies of several nodes on one host would all bind
the same port. Requests name their datacenter through the edge's header instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from cluster.exceptions import ClusterError
from cluster.local import CLUSTER_MARK_ENV, SERVE_ENV, free_port, terminate
from cluster.settings import Settings
from cluster.topology import REGION_LABEL, Datacenter

FIRST_NODE_IP = 11  # 127.0.0.11 for the first datacenter; the head is 127.0.0.1
_READY_TIMEOUT_S = 90.0


def datacenters_of(names: list[str]) -> list[Datacenter]:
    """``["us-east", "eu-west"]`` -> their Datacenters (zone ``<region>-a``), names checked."""
    if len(set(names)) != len(names):
        raise ClusterError(f"--datacenters {','.join(names)}: name each datacenter once.")
    try:
        return [Datacenter(region=name, zone=f"{name}-a") for name in names]
    except ValueError as err:
        raise ClusterError(f"--datacenters: {err}") from None


def node_ip(index: int) -> str:
    """The loopback address of the ``index``-th datacenter's node."""
    return f"127.0.0.{FIRST_NODE_IP + index}"


def node_command(settings: Settings, ip: str, cpus: int) -> list[str]:
    """``ray start`` for one datacenter's node joining this cluster's head."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    return [
        ray_cli,
        "start",
        f"--address={_joinable(settings.gcs_address)}",
        f"--node-ip-address={ip}",
        f"--num-cpus={cpus}",
        f"--temp-dir={settings.ray_temp_dir}",
        # Ray's fixed default for this one would collide between clusters on one host.
        f"--dashboard-agent-listen-port={free_port(ip)}",
        "--disable-usage-stats",
    ]


def _joinable(gcs_address: str) -> str:
    """The head's address as a joining node must name it. A joining ``ray start`` swaps
    127.0.0.1 for the host's outward IP (where the head does not listen); the same address
    written IPv4-mapped (the head's GCS socket is dual-stack) is left as it is."""
    host, _, port = gcs_address.rpartition(":")
    return f"[::ffff:{host}]:{port}" if host == "127.0.0.1" else gcs_address


def running(settings: Settings) -> dict[str, str]:
    """Datacenters with a live node in this cluster: region -> node IP (the head's region
    included). Through the State API: the process must be connected (``connect_clients``)."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address=settings.dashboard_url, detail=True, limit=10_000)
    return {
        n.labels[REGION_LABEL]: n.node_ip
        for n in nodes
        if n.state == "ALIVE" and REGION_LABEL in n.labels
    }


def _layout_file(settings: Settings) -> Path:
    return settings.ray_temp_dir / "aimass-datacenters.json"


def layout(settings: Settings) -> tuple[list[str], int]:
    """The datacenters ``start`` was given last, and their CPUs each (none: ``[]``)."""
    path = _layout_file(settings)
    if not path.exists():
        return [], 0
    data = json.loads(path.read_text())
    return data["datacenters"], data["cpus"]


def start(settings: Settings, names: list[str] | None = None, cpus: int = 2) -> list[str]:
    """Start a node for each of ``names`` (default: the datacenters given last, which keeps
    each on its address) that has none; wait until each is alive. Returns the datacenters
    started (idempotent: those already up are left as they are)."""
    if names is None:
        names, cpus = layout(settings)
    datacenters = datacenters_of(names)
    _layout_file(settings).parent.mkdir(parents=True, exist_ok=True)
    _layout_file(settings).write_text(json.dumps({"datacenters": names, "cpus": cpus}))
    up = running(settings)
    started = []
    for index, dc in enumerate(datacenters):
        if dc.region in up:
            continue
        _start_node(settings, dc, node_ip(index), cpus)
        started.append(dc.region)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while missing := [dc.region for dc in datacenters if dc.region not in running(settings)]:
        if time.monotonic() > deadline:
            raise ClusterError(
                f"Datacenter nodes {', '.join(missing)} did not join within "
                f"{_READY_TIMEOUT_S:.0f} s; see {settings.ray_temp_dir}/session_latest/logs."
            )
        time.sleep(0.5)
    return started


def _start_node(settings: Settings, dc: Datacenter, ip: str, cpus: int) -> None:
    bin_dir = str(Path(sys.executable).parent)  # jobs' `python` is this venv's (as the head)
    env = {
        **SERVE_ENV,
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        **settings.as_env(),
        **settings.ray_client_env(),
        **dc.node_env(),  # this node's region and zone, not the head's
        CLUSTER_MARK_ENV: str(settings.ray_temp_dir),
        # The loopback switch of ray_client_env (0) also refuses to join a head; this node
        # names its own address and the head's (see _joinable), so none is swapped.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
    }
    proc = subprocess.run(node_command(settings, ip, cpus), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(
            f"`ray start` of datacenter {dc.region} at {ip} failed:\n{proc.stderr[-2000:]}",
            settings.gcs_address,
        )


def stop(settings: Settings, region: str, timeout_s: float = 20.0) -> int:
    """End the node of datacenter ``region`` and what it started (its raylet, agents and
    workers): the datacenter is lost to the cluster. Returns how many processes ended."""
    ip = running(settings).get(region)
    if ip is None or ip == settings.host:
        raise ClusterError(f"No datacenter node {region!r} runs in this cluster.")
    procs = _node_processes(ip)
    terminate(procs, timeout_s)
    return len(procs)


def _node_processes(ip: str) -> list[psutil.Process]:
    """The processes of the node at ``ip``: those naming it, and their descendants."""
    named = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if f"--node-ip-address={ip}" in cmdline or f"--node_ip_address={ip}" in cmdline:
            named.append(proc)
    found = {p.pid: p for p in named}
    for proc in named:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
    return list(found.values())
