"""Unit tests run without Ray: starting or joining a cluster here is a bug."""

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*_args, **_kwargs):
        raise RuntimeError("unit tests must not call ray.init(); move the test to integration/")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def settings_env(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """Default settings, but with home (storage, MLflow db, keys) in a fresh temp folder."""
    import os

    for name in [n for n in os.environ if n.startswith("AIMASS_")]:
        monkeypatch.delenv(name)  # e.g. left by the session cluster of integration tests
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path / "home"))
    from cluster.settings import get_settings

    return get_settings()
