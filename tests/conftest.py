"""Test tiers by folder (unit / integration / e2e) and the shared local cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.local import free_port

TIERS = ("unit", "integration", "e2e")


# Session fixtures that keep whole clusters running until the session ends: the tests that
# use them run last, so no other test shares the 2 cores with those idle clusters (L2's
# latency budget missed with the edge's two clusters still up behind it).
LAST_FIXTURES = ("fleet",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = next((t for t in TIERS if f"{os.sep}{t}{os.sep}" in str(item.path)), None)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))
    # A stable sort: the order is otherwise the files' own.
    items.sort(key=lambda i: any(f in getattr(i, "fixturenames", ()) for f in LAST_FIXTURES))


def private_cluster_env(home: Path) -> dict[str, str]:
    """AIMASS_* settings for a private cluster: its own home, token and ports."""
    return {
        "AIMASS_HOME": str(home),
        "AIMASS_TOKEN_PATH": str(home / "auth_token"),
        "AIMASS_GCS_PORT": str(free_port()),
        "AIMASS_DASHBOARD_PORT": str(free_port()),
        "AIMASS_SERVE_PORT": str(free_port()),
        "AIMASS_PROMETHEUS_PORT": str(free_port()),
        # Alert rules fast enough to fire and resolve within a test (the expressions are
        # the shipped ones): 5 s scrapes, 30 s windows, firing as soon as a condition holds.
        "AIMASS_PROMETHEUS_SCRAPE_S": "5",
        "AIMASS_ALERT_WINDOW_S": "30",
        "AIMASS_ALERT_FOR_S": "0",
    }


@pytest.fixture(scope="session")
def new_cluster_env(tmp_path_factory: pytest.TempPathFactory):
    """``new_cluster_env(name)``: settings for another private cluster (another shape)."""
    return lambda name: private_cluster_env(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def cluster_env(new_cluster_env) -> dict[str, str]:
    """AIMASS_* settings of the session's shared cluster."""
    return new_cluster_env("aimass-home")


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


@pytest.fixture(scope="session")
def package_factory(tmp_path_factory: pytest.TempPathFactory):
    """A factory of real model packages: ``package_factory("v1", accuracy=0.9)`` writes a
    fresh (untrained) digits CNN's weights, ONNX model and config.json into a new folder and
    returns it."""
    import torch

    from models import package
    from models.onnx_export import export_onnx
    from models.weights import save_weights
    from models.zoo import architecture, build_model

    def make(name: str = "pkg", accuracy: float = 0.9) -> Path:
        folder = tmp_path_factory.mktemp(name)
        model = build_model("digits_cnn")
        save_weights(model, folder / package.WEIGHTS_FILE)
        export_onnx(model, torch.rand(2, 64), folder / package.ONNX_FILE)
        signature = architecture("digits_cnn").signature_for({})
        package.PackageConfig("digits_cnn", signature, {}, {"accuracy": accuracy}).write(folder)
        return folder

    return make


@pytest.fixture
def make_package(package_factory):
    """``package_factory`` for one test."""
    return package_factory


@pytest.fixture(scope="session")
def register_gpt(tmp_path_factory: pytest.TempPathFactory):
    """``register_gpt(registry, "lm", seed=0, n_layer=4)``: a fresh GPT (``tiny`` preset with
    those overrides, weights from ``seed``) registered as a new version (weights and config,
    no ONNX model). Returns the version's info and the model."""
    import torch

    from models import package
    from models.gpt import GPT
    from models.weights import save_weights
    from models.zoo import architecture, build_model

    def register(registry, name: str = "lm", seed: int = 0, **overrides):
        torch.manual_seed(seed)
        options = {"preset": "tiny", **overrides}
        model: GPT = build_model("gpt", **options).eval()
        folder = tmp_path_factory.mktemp(f"gpt-{name}")
        save_weights(model, folder / package.WEIGHTS_FILE)
        signature = architecture("gpt").signature_for(options)
        package.PackageConfig("gpt", signature, options, {}).write(folder)
        run = registry.client.create_run(registry.experiment(name))
        return registry.register(name, run.info.run_id, folder), model

    return register
