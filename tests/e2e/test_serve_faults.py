"""Serving under faults, with a request ledger (RELIABILITY.md F1, F2, F3, F8):

- F8: a redeploy that replaces every Predictor replica (a new version of its options) while
  requests are in flight drops none;
- F1: killing one of two Predictor replicas under load: >= 99.9 % succeed with client
  retries, and a replacement runs within 60 s;
- F2: killing one of the two Gateway replicas: the same;
- F3: killing the Serve controller: not one request fails, even without retries.
"""

from __future__ import annotations

import copy
import time

import pytest
import ray
from ray import serve
from ray._common.test_utils import wait_for_condition
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.util.state import list_actors

from cluster.deploy import deploy_models_api, rendered_config

APP = "models"


@pytest.fixture(scope="module")
def driver(served):
    ray.init(address=served.settings.gcs_address, log_to_driver=False)
    yield served
    ray.shutdown()


def _replicas(deployment: str) -> list[str]:
    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
    return sorted(a.name for a in alive if (a.name or "").startswith(prefix))


def _running(deployment: str) -> int:
    status = serve.status().applications[APP].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def _deploy_with(settings, predictor_min: int, cpus: float) -> None:
    """serve deploy with the Predictor's floor and CPUs changed (a new replica version)."""
    config = copy.deepcopy(rendered_config(settings))
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "Predictor":
            d["autoscaling_config"]["min_replicas"] = predictor_min
            d["ray_actor_options"]["num_cpus"] = cpus
    deploy_models_api(settings, config)


def _stable(deployment: str, replicas: int) -> bool:
    status = serve.status().applications[APP]
    return status.status == "RUNNING" and _running(deployment) >= replicas


def _kill_one(deployment: str) -> str:
    victim = _replicas(deployment)[0]
    ray.kill(ray.get_actor(victim, namespace=SERVE_NAMESPACE), no_restart=True)
    return victim


def _success_rate(ledger: list) -> float:
    return sum(1 for entry in ledger if entry[1] == 200) / max(len(ledger), 1)


def test_f8_a_redeploy_under_load_drops_no_request(driver, traffic):
    with traffic(in_flight=4) as load:
        load.wait_for(30)
        _deploy_with(driver.settings, predictor_min=2, cpus=0.3)
        wait_for_condition(lambda: _stable("Predictor", 2), timeout=180, retry_interval_ms=500)
        load.wait_for(30)
    assert load.failures() == [], load.failures()[:5]
    assert len(load.ledger) >= 60


@pytest.mark.parametrize("deployment", ["Predictor", "Gateway"])
def test_f1_f2_a_killed_replica_costs_no_request_with_retries(driver, traffic, deployment):
    wait_for_condition(lambda: _stable(deployment, 2), timeout=180, retry_interval_ms=500)
    with traffic(in_flight=4, retries=3) as load:
        load.wait_for(30)
        victim = _kill_one(deployment)
        killed_at = time.monotonic()
        wait_for_condition(
            lambda: victim not in _replicas(deployment) and _stable(deployment, 2),
            timeout=60,
            retry_interval_ms=250,
        )
        replaced_s = time.monotonic() - killed_at
        load.wait_for(30)
    assert _success_rate(load.ledger) >= 0.999, load.failures()[:5]
    assert replaced_s < 60


def test_f3_killing_the_serve_controller_fails_no_request(driver, traffic):
    with traffic(in_flight=4) as load:
        load.wait_for(30)
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        ray.kill(controller, no_restart=False)  # Ray restarts it; replicas keep serving
        wait_for_condition(
            lambda: serve.status().applications[APP].status == "RUNNING",
            timeout=120,
            retry_interval_ms=500,
        )
        load.wait_for(30)
    assert load.failures() == [], load.failures()[:5]


def test_the_default_config_comes_back(driver):
    deploy_models_api(driver.settings)
    wait_for_condition(lambda: _stable("Predictor", 1), timeout=180, retry_interval_ms=500)
