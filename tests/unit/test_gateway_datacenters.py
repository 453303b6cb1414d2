"""The Gateway with one Predictor per datacenter, over ASGI and without Ray: requests are
served at their origin, spill to the nearest datacenter when it is saturated or failing,
never leave a restricted key's datacenters, and say where they were served."""

from __future__ import annotations

import numpy as np
import pytest
from gateway_doubles import (
    ROW,
    Generator,
    LimiterHandle,
    Predictor,
    Releases,
    ServeStatus,
    as_replica,
    post,
)
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from serve_apps._private.access import QuotaGate
from serve_apps._private.answers import Answers
from serve_apps._private.datacenters import predictor_name
from serve_apps._private.prediction import Prediction
from serve_apps.gateway import Gateway
from serve_apps.keys import KeyStore, keys_uri

PREDICT = "/v1/models/digits/predict"
DATACENTERS = ("us-east", "eu-west", "ap-south")


class RegionalPredictor(Predictor):
    """A datacenter's Predictor deployment: answers from ``region``; ``saturated`` refuses
    as a full Serve queue does, ``down`` fails as a lost replica does."""

    def __init__(self, region: str) -> None:
        super().__init__()
        self.region, self.saturated, self.down = region, False, False

    async def _predict(self, version: int, inputs: np.ndarray) -> Prediction:
        if self.saturated:
            raise BackPressureError(num_queued_requests=8, max_queued_requests=8)
        if self.down:
            raise RayActorError()
        answer = await super()._predict(version, inputs)
        return Prediction(answer.version, answer.probabilities, self.region)


@pytest.fixture
def predictors() -> dict[str, RegionalPredictor]:
    return {dc: RegionalPredictor(dc) for dc in DATACENTERS}


@pytest.fixture
def status() -> ServeStatus:
    return ServeStatus({predictor_name(dc): 1 for dc in DATACENTERS})


@pytest.fixture
def gateway(settings_env, monkeypatch, predictors, status):
    cls = Gateway.func_or_class.__wrapped__
    g = cls(dict(predictors), Generator(), own_region=lambda: "head")
    g.reconfigure({"datacenters": {"tenants": {"acme": ["eu-west", "ap-south"]}}})
    g.releases = Releases()
    g.answers = Answers(dict(predictors), g.releases, 5.0, g.datacenters.health, 1.0)
    g.quota = QuotaGate(0.1, 1.0, find_limiter=LimiterHandle)
    as_replica(monkeypatch, g, status)
    return g


@pytest.fixture
def keys(settings_env) -> KeyStore:
    return KeyStore(keys_uri(settings_env.storage_root), ttl_s=0)


def _served(client, key: str, origin: str | None = None):
    headers = {"X-Origin-Datacenter": origin} if origin else {}
    r = post(client, PREDICT, {"instances": [ROW]}, key, **headers)
    return r.status_code, r.headers.get("X-Served-Region"), r


def test_a_request_is_served_in_its_origin_datacenter(client, keys):
    key, _ = keys.create("app")
    for origin in DATACENTERS:
        assert _served(client, key, origin)[:2] == (200, origin)
    # No origin from the edge, and the gateway's region is none of them: the first listed.
    assert _served(client, key)[:2] == (200, "us-east")


def test_a_saturated_datacenter_spills_to_the_nearest_and_fails_back(client, keys, predictors):
    key, _ = keys.create("app")
    predictors["eu-west"].saturated = True
    assert _served(client, key, "eu-west")[:2] == (200, "us-east")  # 75 ms, before ap-south
    predictors["us-east"].saturated = True
    assert _served(client, key, "eu-west")[:2] == (200, "ap-south")
    predictors["eu-west"].saturated = predictors["us-east"].saturated = False
    assert _served(client, key, "eu-west")[:2] == (200, "eu-west")


def test_every_datacenter_saturated_is_a_503_with_retry_after(client, keys, predictors):
    key, _ = keys.create("app")
    for p in predictors.values():
        p.saturated = True
    status, _, r = _served(client, key, "eu-west")
    assert status == 503 and r.headers["Retry-After"] == "1" and r.json()["error"] == "overloaded"


def test_a_failing_datacenter_is_ejected_after_failures_in_a_row(client, gateway, keys, predictors):
    key, _ = keys.create("app")
    predictors["eu-west"].down = True
    for _ in range(2):  # each failure is absorbed: the next datacenter answers
        assert _served(client, key, "eu-west")[:2] == (200, "us-east")
    assert gateway.datacenters.health.ejected() == ["eu-west"]
    asked = len(predictors["eu-west"].asked)
    assert _served(client, key, "eu-west")[:2] == (200, "us-east")
    assert len(predictors["eu-west"].asked) == asked  # ejected: not even tried


def test_a_datacenter_without_running_replicas_leaves_the_order(client, gateway, keys, status):
    key, _ = keys.create("app")
    gateway.datacenters.health.running = {"us-east": 1, "eu-west": 0, "ap-south": 1}
    assert _served(client, key, "eu-west")[:2] == (200, "us-east")


def test_a_restricted_key_is_never_served_outside_its_datacenters(client, keys, predictors):
    key, record = keys.create("eu-only", datacenters=("eu-west",))
    assert _served(client, key, "us-east")[:2] == (200, "eu-west")  # enters in us-east
    predictors["eu-west"].saturated = True
    status, served, r = _served(client, key, "us-east")
    assert status == 503 and served is None  # refused, not spilled to us-east
    predictors["eu-west"].saturated = False
    predictors["eu-west"].down = True
    status, served, r = _served(client, key, "us-east")
    assert status == 503 and served is None


def test_tenant_and_key_residency_combine(client, gateway, keys, predictors):
    key, record = keys.create("acme-app", tenant="acme")  # acme: eu-west, ap-south
    assert _served(client, key, "us-east")[:2] == (200, "eu-west")
    gateway.datacenters.health.running = {"us-east": 1, "eu-west": 0, "ap-south": 1}
    assert _served(client, key, "us-east")[:2] == (200, "ap-south")
    gateway.datacenters.health.running = {"us-east": 1, "eu-west": 0, "ap-south": 0}
    status, _, r = _served(client, key, "us-east")
    assert status == 503 and f"key {record.id} (tenant acme) is restricted" in r.json()["detail"]


def test_a_key_homed_to_a_datacenter_is_served_there_first(client, keys):
    key, _ = keys.create("eu-users", home="eu-west")
    assert _served(client, key)[:2] == (200, "eu-west")


def test_an_origin_naming_no_datacenter_is_a_400(client, keys):
    key, _ = keys.create("app")
    status, _, r = _served(client, key, "mars")
    assert status == 400 and r.json()["error"] == "unknown_datacenter"


def test_a_policy_naming_an_unknown_datacenter_is_refused_naming_the_field(gateway):
    with pytest.raises(ValueError, match=r"datacenters.tenants.acme\[1\]: unknown datacenter"):
        gateway.reconfigure({"datacenters": {"tenants": {"acme": ["eu-west", "mars"]}}})


def test_the_replica_counts_come_from_the_serve_controller(client, gateway, keys, status):
    key, _ = keys.create("app")
    status.running[predictor_name("ap-south")] = 0
    _served(client, key, "eu-west")  # the first request starts the watch
    gateway.datacenters.health.running = None
    client.portal.call(_until_running_is_read, gateway)
    assert gateway.datacenters.health.running == {"us-east": 1, "eu-west": 1, "ap-south": 0}


async def _until_running_is_read(gateway) -> None:
    import asyncio

    for _ in range(300):
        if gateway.datacenters.health.running is not None:
            return
        await asyncio.sleep(0.01)
