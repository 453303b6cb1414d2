"""The running edge: started or reloaded from a spec, stopped, and steered through its
runtime API (weights, drains, the residency map) with no reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.edge import process
from cluster.edge.haproxy_config import Rendered, render
from cluster.edge.process import ProcessFiles
from cluster.edge.runtime_api import AdminState, RuntimeApi, ServerRow
from cluster.edge.spec import EdgeSpec
from cluster.exceptions import ClusterError


@dataclass(frozen=True, slots=True)
class Started:
    """What ``up`` did: ``started`` a new HAProxy, or ``reloaded`` the running one."""

    pid: int
    reloaded: bool
    files: ProcessFiles


def _write_private(path: Path, text: str) -> None:
    """Write through a 0600 temp file renamed into place: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)
    tmp.write_text(text)
    tmp.replace(path)


def write_files(files: ProcessFiles, rendered: Rendered) -> None:
    files.folder.mkdir(parents=True, exist_ok=True)
    files.folder.chmod(0o700)
    _write_private(files.residency_map, rendered.residency)
    _write_private(files.config, rendered.config)


def up(spec: EdgeSpec, folder: Path, residency: dict[str, str] | None = None) -> Started:
    """Start the edge of ``spec`` with its files in ``folder``, or reload the running one
    with the new spec (no connection dropped; weights and states set at runtime kept).

    The configuration is checked by ``haproxy -c`` in a staging folder first: a bad one
    never replaces the running one.
    """
    files, staging = ProcessFiles(folder), ProcessFiles(folder / "staging")
    write_files(staging, render(spec, staging, residency))
    process.check(staging.config)
    write_files(files, render(spec, files, residency))
    if process.master(files) is not None:
        process.reload(files)
        return Started(process.master(files).pid, reloaded=True, files=files)
    return Started(process.start(files), reloaded=False, files=files)


def down(folder: Path) -> bool:
    """Stop the edge whose files are in ``folder`` (its connections finish first)."""
    return process.stop(ProcessFiles(folder))


def runtime(folder: Path) -> RuntimeApi:
    """The runtime API of the edge in ``folder``; ClusterError when none runs there."""
    files = ProcessFiles(folder)
    if process.master(files) is None:
        raise ClusterError(f"No edge runs from {folder}: start one with `aimass edge up`.")
    return RuntimeApi(files.socket)


def _servers_of(api: RuntimeApi, cluster: str) -> list[ServerRow]:
    """The cluster's server in each backend it is in (its datacenter's, the global one)."""
    rows = api.servers()
    mine = [r for r in rows if r.server == cluster]
    if not mine:
        known = ", ".join(sorted({r.server for r in rows})) or "none"
        raise ClusterError(f"No cluster {cluster!r} behind this edge (it has {known}).")
    return mine


def set_weight(folder: Path, cluster: str, weight: int) -> list[ServerRow]:
    """Give ``cluster`` ``weight`` in every split it is part of, at once, no reload. Weight
    0 takes it out of its datacenter's share count too (as a drain does)."""
    api = runtime(folder)
    for row in _servers_of(api, cluster):
        api.set_weight(row.backend, row.server, weight)
    return _servers_of(api, cluster)


def set_state(folder: Path, cluster: str, state: AdminState) -> list[ServerRow]:
    """Drain ``cluster`` (no new requests; those in flight finish), or make it ready again."""
    api = runtime(folder)
    for row in _servers_of(api, cluster):
        api.set_state(row.backend, row.server, state)
    return _servers_of(api, cluster)


def sync_residency(folder: Path, residency: dict[str, str]) -> dict[str, list[str]]:
    """Make the running edge's residency map ``residency`` (no reload) and write it to the
    map file (a reload or restart keeps it). Returns the key ids added, changed, removed."""
    api, path = runtime(folder), ProcessFiles(folder).residency_map
    now = api.map_entries(path)
    changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    for key_id, datacenters in residency.items():
        if now.get(key_id) != datacenters:
            api.map_set(path, key_id, datacenters)
            changes["changed" if key_id in now else "added"].append(key_id)
    for key_id in sorted(set(now) - set(residency)):
        api.map_delete(path, key_id)
        changes["removed"].append(key_id)
    _write_private(path, "".join(f"{k} {v}\n" for k, v in residency.items()))
    return changes
