"""HAProxy's runtime API on its unix socket (``stats socket``, mode 0600, level admin):
servers' weights and states and map entries change with no reload at all. It knows
nothing of aimass's edge (``cluster.edge.haproxy_config`` writes what HAProxy runs).
"""

from __future__ import annotations

import csv
import io
import socket
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cluster.exceptions import ClusterError


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
