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


# ---- the Gateway over ASGI, with in-process stand-ins (tests/unit/gateway_doubles.py) ----


@pytest.fixture
def gateway(settings_env, monkeypatch):
    """The real Gateway replica, its upstreams replaced by ``gateway_doubles``; Serve's
    replica context names it, as Serve would inject it as the routes' ``self``."""
    from gateway_doubles import (
        Generator,
        LimiterHandle,
        Predictor,
        Releases,
        ServeStatus,
        as_replica,
    )

    from serve_apps._private.access import QuotaGate
    from serve_apps._private.answers import Answers
    from serve_apps.gateway import Gateway

    cls = Gateway.func_or_class.__wrapped__  # the class under Serve's ingress wrapper
    predictor = Predictor()
    g = cls(predictor, Generator())
    g.releases = Releases()
    g.answers = Answers({None: predictor}, g.releases, g.config.upstream_timeout_s)
    g.quota = QuotaGate(0.1, 1.0, find_limiter=LimiterHandle)
    g.serve_status = ServeStatus({"Predictor": 1})
    as_replica(monkeypatch, g, g.serve_status)
    return g


@pytest.fixture
def client(gateway):
    from starlette.testclient import TestClient

    from serve_apps.gateway import api

    with TestClient(api, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def key(settings_env) -> str:
    from serve_apps.keys import KeyStore, keys_uri

    return KeyStore(keys_uri(settings_env.storage_root)).create("tests")[0]
