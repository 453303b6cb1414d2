"""The storage URI's writes on a local disk: atomic, and private when asked (no cluster)."""

from __future__ import annotations

import os

import pytest

from cluster import storage


@pytest.fixture
def loose_umask():
    """A umask that lets everyone read new files, as on many shared machines."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_a_private_write_is_0600_whatever_the_umask(tmp_path, loose_umask):
    target = tmp_path / "secrets" / "file.json"
    storage.write_bytes(str(target), b"{}", private=True)
    assert target.read_bytes() == b"{}" and _mode(target) == 0o600


def test_a_private_rewrite_tightens_a_file_left_readable_and_leaves_no_temp_file(
    tmp_path, loose_umask
):
    target = tmp_path / "file.json"
    storage.write_bytes(str(target), b"old")
    assert _mode(target) == 0o644  # a plain write follows the umask
    storage.write_bytes(f"file://{target}", b"new", private=True)
    assert target.read_bytes() == b"new" and _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_a_failed_private_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "file.json"
    storage.write_bytes(str(target), b"old", private=True)

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(str(target), b"new", private=True)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]
