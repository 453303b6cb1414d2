"""`aimass edge`: check, up (with a key store's residency), status, weight, drain, ready,
down, on a real HAProxy (its clusters need not run for these)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster import edge
from cluster.cli import aimass
from cluster.local import free_port
from serve_apps.keys import KeyStore, keys_uri


@pytest.fixture
def spec_file(tmp_path: Path) -> tuple[Path, str]:
    """An edge spec naming a key store with one key restricted to eu-west; (path, key id)."""
    root = str(tmp_path / "storage")
    _, record = KeyStore(keys_uri(root)).create("eu-only", datacenters=("eu-west",))
    KeyStore(keys_uri(root)).create("anywhere")
    spec = {
        "clusters": [
            {"name": "use-1", "datacenter": "us-east", "url": f"http://127.0.0.1:{free_port()}"},
            {"name": "euw-1", "datacenter": "eu-west", "url": f"http://127.0.0.1:{free_port()}"},
        ],
        "frontends": [{"datacenter": "us-east", "bind": free_port()}],
        "residency": {"key_stores": [root]},
    }
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, record.id


def _aimass(capsys, *argv: str) -> str:
    aimass.main(list(argv))
    return capsys.readouterr().out


def test_the_edge_commands_end_to_end(spec_file, tmp_path, capsys, settings_env):
    path, key_id = spec_file
    state = ["--state-dir", str(tmp_path / "edge")]
    assert "valid (2 clusters" in _aimass(capsys, "edge", "check", "--config", str(path))
    out = _aimass(capsys, "edge", "up", "--config", str(path), *state)
    assert "Started the edge" in out and "1 restricted keys" in out
    files = edge.ProcessFiles(tmp_path / "edge")
    try:
        assert files.residency_map.read_text() == f"{key_id} eu-west\n"
        out = _aimass(capsys, "edge", "status", *state)
        assert "use-1" in out and "euw-1" in out and "us-east" in out
        out = _aimass(capsys, "edge", "weight", "euw-1", "7", *state)
        assert "dc_eu-west/euw-1" in out and "weight 7" in out
        out = _aimass(capsys, "edge", "drain", "use-1", *state)
        assert "takes no new requests" in out and "dc_us-east/use-1" in out
        out = _aimass(capsys, "edge", "ready", "use-1", *state)
        assert "takes requests again" in out  # (DOWN either way here: nothing listens)
        # a reload keeps the runtime weight
        assert "Reloaded" in _aimass(capsys, "edge", "up", "--config", str(path), *state)
        rows = edge.runtime(files.folder).servers()
        assert {r.weight for r in rows if r.server == "euw-1"} == {7}
        out = _aimass(capsys, "edge", "residency", "--config", str(path), *state)
        assert "added none, changed none, removed none" in out
    finally:
        assert "Stopped the edge" in _aimass(capsys, "edge", "down", *state)
    with pytest.raises(SystemExit):
        aimass.main(["edge", "status", *state])
    assert "No edge runs from" in capsys.readouterr().out


def test_a_bad_spec_is_refused_by_the_cli_naming_the_field(tmp_path, capsys, settings_env):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"clusters": [{"name": "a", "datacenter": "x y"}]}))
    with pytest.raises(SystemExit):
        aimass.main(["edge", "check", "--config", str(path)])
    out = capsys.readouterr().out
    assert "clusters.0.datacenter" in out and "clusters.0.url" in out
