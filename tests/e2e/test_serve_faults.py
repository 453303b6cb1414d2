"""Serving under faults, with a request ledger (RELIABILITY.md F1, F2, F3, F4, F8):

- F8: a redeploy that replaces every Predictor replica (a new version of its options) while
  requests are in flight drops none;
- F1: killing one of two Predictor replicas under load: >= 99.9 % succeed with client
  retries, and a replacement runs within 60 s;
- F2: killing one of the two Gateway replicas: the same;
- F4: one of two Predictor replicas starts failing its health check: Serve drains and
  replaces it, and not one request fails, even without retries;
- F3: killing the Serve controller: not one request fails, even without retries.
"""

from __future__ import annotations

import time

import pytest
import ray
from ray import serve
from ray._common.test_utils import wait_for_condition
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE


def _kill_one(ops, deployment: str) -> str:
    victim = ops.replicas(deployment)[0]
    ray.kill(ray.get_actor(victim, namespace=SERVE_NAMESPACE), no_restart=True)
    return victim


def _success_rate(ledger: list) -> float:
    return sum(1 for entry in ledger if entry[1] == 200) / max(len(ledger), 1)


def test_f8_a_redeploy_under_load_drops_no_request(serve_ops, traffic):
    with traffic(in_flight=4) as load:
        load.wait_for(30)
        # A new replica version: every Predictor replica is replaced, two kept from now on.
        serve_ops.deploy(
            autoscaling_config={"min_replicas": 2}, ray_actor_options={"num_cpus": 0.3}
        )
        wait_for_condition(
            lambda: serve_ops.stable("Predictor", 2), timeout=180, retry_interval_ms=500
        )
        load.wait_for(30)
    assert load.failures() == [], load.failures()[:5]
    assert len(load.ledger) >= 60


@pytest.mark.parametrize("deployment", ["Predictor", "Gateway"])
def test_f1_f2_a_killed_replica_costs_no_request_with_retries(serve_ops, traffic, deployment):
    wait_for_condition(lambda: serve_ops.stable(deployment, 2), timeout=180, retry_interval_ms=500)
    with traffic(in_flight=4, retries=3) as load:
        load.wait_for(30)
        victim = _kill_one(serve_ops, deployment)
        killed_at = time.monotonic()
        wait_for_condition(
            lambda: (
                victim not in serve_ops.replicas(deployment) and serve_ops.stable(deployment, 2)
            ),
            timeout=60,
            retry_interval_ms=250,
        )
        replaced_s = time.monotonic() - killed_at
        load.wait_for(30)
    assert _success_rate(load.ledger) >= 0.999, load.failures()[:5]
    assert replaced_s < 60


def test_f4_a_replica_failing_its_health_check_is_replaced_unnoticed(serve_ops, traffic):
    wait_for_condition(lambda: serve_ops.stable("Predictor", 2), timeout=180, retry_interval_ms=500)
    before = serve_ops.replicas("Predictor")
    with traffic(in_flight=4) as load:
        load.wait_for(30)
        predictor = serve.get_deployment_handle("Predictor", serve_ops.app)
        retired = predictor.retire.remote("F4 test").result(timeout_s=30)
        predictor.shutdown()  # its router would outlive this module's Ray session
        victim = next(name for name in before if retired in name)
        wait_for_condition(
            lambda: (
                victim not in serve_ops.replicas("Predictor") and serve_ops.stable("Predictor", 2)
            ),
            timeout=120,
            retry_interval_ms=250,
        )
        load.wait_for(30)
    assert load.failures() == [], load.failures()[:5]
    assert len(serve_ops.replicas("Predictor")) == 2


def test_f3_killing_the_serve_controller_fails_no_request(serve_ops, traffic):
    with traffic(in_flight=4) as load:
        load.wait_for(30)
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        ray.kill(controller, no_restart=False)  # Ray restarts it; replicas keep serving
        wait_for_condition(
            lambda: serve.status().applications[serve_ops.app].status == "RUNNING",
            timeout=120,
            retry_interval_ms=500,
        )
        load.wait_for(30)
    assert load.failures() == [], load.failures()[:5]


def test_the_default_config_comes_back(serve_ops):
    serve_ops.deploy()
    wait_for_condition(lambda: serve_ops.stable("Predictor", 1), timeout=180, retry_interval_ms=500)
