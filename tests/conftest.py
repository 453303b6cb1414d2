"""Test tiers by folder (unit / integration / e2e) and the shared local cluster."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = next((t for t in TIERS if f"{os.sep}{t}{os.sep}" in str(item.path)), None)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cluster_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """AIMASS_* settings for a private cluster: its own home, token and ports."""
    home = tmp_path_factory.mktemp("aimass-home")
    return {
        "AIMASS_HOME": str(home),
        "AIMASS_TOKEN_PATH": str(home / "auth_token"),
        "AIMASS_GCS_PORT": str(_free_port()),
        "AIMASS_DASHBOARD_PORT": str(_free_port()),
        "AIMASS_SERVE_PORT": str(_free_port()),
    }


@pytest.fixture(scope="session")
def local_cluster(cluster_env: dict[str, str]):
    """One real Ray head (token auth on), started with `aimass up`'s code, for the session.

    Yields its Settings; the test process's environment points Ray clients at it.
    """
    from cluster import local
    from cluster.settings import get_settings

    saved = dict(os.environ)
    os.environ.update(cluster_env)
    settings = get_settings()
    local.connect_clients(settings)
    local.up(settings)
    try:
        yield settings
    finally:
        local.down(settings)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
