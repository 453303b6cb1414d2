"""The embedded local cluster: a real Ray head on this machine, with token auth on.

``up`` runs ``ray start --head`` bound to 127.0.0.1 with ``RAY_AUTH_MODE=token``, the
default datacenter's labels and the ``AIMASS_*`` settings in its environment (so every job
and replica inherits them), in a session of its own that it records under the cluster's
temp dir. ``down`` ends only the processes of *this* cluster, never other Ray clusters on
the host (``ray stop`` would end them all): those of that session, those carrying its mark
or naming its temp dir or GCS address, and their descendants; TERM first, KILL after a grace
period. Both are idempotent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from cluster.exceptions import ClusterError
from cluster.monitoring import prometheus
from cluster.settings import Settings

_READY_TIMEOUT_S = 90.0
# Set only in the environment of `ray start`, so every process of the cluster inherits it
# (workers and agents rename themselves, e.g. "ray::DashboardAgent", and drop any other
# trace of the cluster from their command line), and no process outside it has it.
CLUSTER_MARK_ENV = "AIMASS_CLUSTER_MARK"
# The admission middleware every Serve HTTP proxy loads (``serve_apps/admission.py``). A
# string, not an import: the cluster layer must not import the Serve application (a unit
# test checks that it resolves).
PROXY_CALLBACK = "serve_apps.admission:middlewares"
# Ray Serve reads these in each of its processes, so they are set where Ray starts:
SERVE_ENV = {
    # Every HTTP proxy refuses excess requests before routing them (serve_apps.admission).
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": PROXY_CALLBACK,
    # Serve's throughput profile (user code and the router on each process's main loop,
    # gRPC between deployments, GC frozen after start, no log copy to stderr): +35 % req/s
    # through the model API on 2 cores. Not its direct ingress: without HAProxy in front
    # it only adds a listener per replica.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    # ... nor its log buffer (1,000 lines, flushed only when full or on an error): a quiet
    # replica's lines would reach its log file hours late, or never.
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
}


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What a user needs to reach a running local cluster."""

    dashboard_url: str
    gcs_address: str
    token_path: Path
    started: bool  # False when `up` found it already running
    prometheus_url: str | None = None  # None when Prometheus is off or not installed


def ensure_token(path: Path) -> str:
    """Return the cluster token, creating it (mode 0600) if missing; tighten loose modes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    token = path.read_text().strip()
    if not token:
        raise ClusterError(f"Token file {path} is empty; delete it and run `aimass up` again.")
    return token


def auth_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.token_path.read_text().strip()}"}


def connect_clients(settings: Settings) -> None:
    """Point this process's Ray clients (Jobs, State and Serve SDKs, CLIs it spawns) at the
    cluster, with its token.

    Ray reads the auth mode and token once per process and caches them; if Ray was imported
    before this call, the cache is refreshed the way Ray's own ``_enable_token_auth`` does.
    """
    os.environ.update(settings.ray_client_env())
    from ray._private import ray_constants

    reload_client_auth()
    if settings.is_loopback:  # read at import time; this process may have imported Ray already
        ray_constants.ENABLE_RAY_CLUSTER = False


def reload_client_auth() -> None:
    """Make this process's Ray clients read the auth mode and token from the environment
    again (Ray caches both per process): after ``connect_clients``, or after the
    environment of an earlier one was put back."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def is_running(settings: Settings) -> bool:
    """True when this cluster's dashboard answers an authenticated request."""
    if not settings.token_path.exists():
        return False
    try:
        r = httpx.get(
            f"{settings.dashboard_url}/api/version", headers=auth_headers(settings), timeout=2.0
        )
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def head_command(settings: Settings) -> list[str]:
    """The ``ray start --head`` command line for this machine's embedded cluster."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    return [
        ray_cli,
        "start",
        "--head",
        f"--node-ip-address={settings.host}",
        f"--port={settings.gcs_port}",
        f"--dashboard-host={settings.host}",
        f"--dashboard-port={settings.dashboard_port}",
        f"--num-cpus={settings.head_cpus}",
        f"--temp-dir={settings.ray_temp_dir}",
        # Ray's fixed defaults for these would collide between two local clusters.
        f"--ray-client-server-port={free_port(settings.host)}",
        f"--dashboard-agent-listen-port={free_port(settings.host)}",
        "--disable-usage-stats",
    ]


def up(settings: Settings) -> ClusterInfo:
    """Start the local head if it is not running (and its Prometheus, when installed); wait
    until its dashboard answers."""
    watched = prometheus.url(settings) if prometheus.enabled(settings) else None
    info = ClusterInfo(
        settings.dashboard_url, settings.gcs_address, settings.token_path, False, watched
    )
    ensure_token(settings.token_path)
    env = cluster_env(settings)
    if watched:
        # First, so that the head's dashboard finds it (RAY_PROMETHEUS_HOST); it waits for
        # Ray's service-discovery file. A head already running without one gets it now.
        prometheus.start(settings, env)
    if is_running(settings):
        return info
    # A session of its own: every process Ray starts keeps its session id, even the agents
    # whose renaming (setproctitle) wipes the mark from the environment block /proc shows,
    # and the workers, which Ray gives process groups of their own.
    proc = subprocess.Popen(
        head_command(settings),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _record_session(settings, proc.pid)  # before it returns: a failed start is cleaned up too
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise ClusterError(
            "`ray start --head` failed (is the port taken by another cluster? set "
            f"AIMASS_GCS_PORT / AIMASS_DASHBOARD_PORT):\n{stderr[-2000:]}",
            settings.gcs_address,
        )
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not is_running(settings):
        if time.monotonic() > deadline:
            raise ClusterError(
                f"Ray head started but its dashboard did not answer in {_READY_TIMEOUT_S:.0f} s; "
                f"see logs under {settings.ray_temp_dir}/session_latest/logs.",
                settings.dashboard_url,
            )
        time.sleep(0.5)
    return ClusterInfo(
        settings.dashboard_url, settings.gcs_address, settings.token_path, True, watched
    )


def cluster_env(settings: Settings) -> dict[str, str]:
    """The environment of the cluster's processes: the head (so every job and replica) and
    its Prometheus."""
    settings.home.mkdir(parents=True, exist_ok=True)
    # Job entrypoints run `python …` from the head's PATH: put this interpreter's bin first,
    # as an activated virtualenv would, so jobs run with the packages aimass installed.
    bin_dir = str(Path(sys.executable).parent)
    return {
        **SERVE_ENV,  # defaults: a RAY_SERVE_* variable set by the user wins
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        **settings.as_env(),
        **settings.datacenter.node_env(),
        **settings.ray_client_env(),
        **prometheus.head_env(settings),
        CLUSTER_MARK_ENV: str(settings.ray_temp_dir),
    }


def _session_file(settings: Settings) -> Path:
    return settings.ray_temp_dir / "aimass-session.json"


def _record_session(settings: Settings, sid: int) -> None:
    """Note the session `ray start` leads (its pid) and this boot, atomically."""
    path = _session_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Ray makes its temp dir writable by all: mkstemp creates a fresh 0600 file, never
    # following a link planted there.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".aimass-session-")
    with os.fdopen(fd, "w") as f:
        json.dump({"sid": sid, "boot_time": psutil.boot_time()}, f)
    os.replace(tmp, path)


def _recorded_session(settings: Settings) -> int | None:
    """The session id `up` recorded, if it can be trusted: written by this user (the temp dir
    is writable by all), writable by no one else, and at this boot (pids restart at each)."""
    path = _session_file(settings)
    try:
        st = path.lstat()
        record = json.loads(path.read_text())
        sid, boot_time = int(record["sid"]), float(record["boot_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None
    return sid if abs(boot_time - psutil.boot_time()) < 1 else None


def cluster_processes(settings: Settings) -> list[psutil.Process]:
    """Processes of this cluster, zombies left out: those carrying its mark or whose command
    line names its temp dir or GCS address, those of the session `up` started (while one of
    them still carries the mark: a record left by a cluster that died names a session id
    the system may have given to anything since), and the descendants of all of these (the
    agents of a raylet whose renaming hid the mark). A process carrying another cluster's
    mark, or descended from one without a mark of its own, is never one."""
    mark = str(settings.ray_temp_dir)
    named = re.compile(
        rf"(?:{re.escape(mark)}|{re.escape(settings.gcs_address)})(?!\d)"  # not …-63790
    )
    procs, marks, children = {}, {}, {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "status"]):
        if proc.pid != os.getpid() and proc.info["status"] != psutil.STATUS_ZOMBIE:
            procs[proc.pid], marks[proc.pid] = proc, _mark(proc)
            children.setdefault(proc.info["ppid"], []).append(proc.pid)
    marked = {pid for pid, m in marks.items() if m == mark}
    foreign = {pid for pid, m in marks.items() if m not in (None, mark)}
    others = _descendants(foreign, children, stop=marked)
    mine = marked | {
        pid for pid, proc in procs.items() if named.search(" ".join(proc.info["cmdline"] or []))
    }
    sid = _recorded_session(settings)
    session = {pid for pid in procs if sid is not None and _session_id(pid) == sid}
    if session & marked:
        mine |= session
    return [procs[pid] for pid in sorted(_descendants(mine - others, children, stop=others))]


def _descendants(roots: set[int], children: dict[int, list[int]], stop=frozenset()) -> set[int]:
    """``roots`` and every descendant of theirs, not going through ``stop``."""
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child not in stop:
                found.add(child)
                todo.append(child)
    return found


def _session_id(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _mark(proc: psutil.Process) -> str | None:
    """The value of the cluster mark in ``proc``'s environment, None when it has none."""
    prefix = f"{CLUSTER_MARK_ENV}=".encode()
    try:
        # Read the raw block: Ray names its workers with setproctitle, which pads the
        # environment area with NULs, and psutil stops parsing at the first empty entry.
        raw = Path(f"/proc/{proc.pid}/environ").read_bytes()
    except FileNotFoundError:  # no /proc (macOS): psutil's view is the best there is
        try:
            return proc.environ().get(CLUSTER_MARK_ENV)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
    except (PermissionError, ProcessLookupError):
        return None
    for entry in raw.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def down(settings: Settings, timeout_s: float = 20.0, sweeps: int = 5) -> int:
    """Stop this cluster's processes; return how many were stopped.

    Each sweep sends TERM, then KILL to those still running after ``timeout_s`` (an agent
    whose raylet died can sit in a blocking call to the dead GCS, its TERM handler never
    run). Sweeps repeat until none is left: a raylet that outlives its agents for a moment
    restarts them under new pids.
    """
    stopped = 0
    for _ in range(sweeps):
        procs = cluster_processes(settings)
        if not procs:
            _session_file(settings).unlink(missing_ok=True)
            break
        terminate(procs, timeout_s)
        stopped += len(procs)
    return stopped


def terminate(procs: list[psutil.Process], timeout_s: float) -> None:
    """TERM ``procs``, then KILL those still running after ``timeout_s``."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
