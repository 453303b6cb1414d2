"""Key scopes and quotas over real HTTP: a flooded key gets 429 with Retry-After, its
admissions stay within the global bound over all gateway replicas, other keys are not
slowed down, and a key without the `predict` scope gets 403 (RELIABILITY.md B5)."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
from ray._common.test_utils import wait_for_condition

from actors.rate_limiter import Quota
from cluster.cli.deploy import rendered_config
from serve_apps.keys import KeyStore, keys_uri

BODY = '{"instances": [[' + ",".join(["3"] * 64) + "]]}"
FLOOD, IN_FLIGHT = 120, 24


def _gateway(settings) -> tuple[int, float]:
    """The deployed gateway's replica count and lease length."""
    app = rendered_config(settings)["applications"][0]
    gateway = next(d for d in app["deployments"] if d["name"] == "Gateway")
    return gateway["num_replicas"], gateway["user_config"]["rate_lease_s"]


def _post(url: str, key: str) -> httpx.Response:
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    return httpx.post(url, content=BODY, headers=headers, timeout=30)


async def _flood(url: str, limited: str, other: str) -> tuple[list, list, float]:
    """FLOOD requests of ``limited`` (IN_FLIGHT at a time) while ``other`` asks in turn."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    done = asyncio.Event()

    async with httpx.AsyncClient(timeout=30) as client:

        async def post(key: str) -> httpx.Response:
            headers = {"X-API-Key": key, "Content-Type": "application/json"}
            return await client.post(url, content=BODY, headers=headers)

        async def one(key: str) -> httpx.Response:
            async with gate:
                return await post(key)

        async def others() -> list[httpx.Response]:
            answers = []
            while not done.is_set() or not answers:
                answers.append(await post(other))
            return answers

        start = time.monotonic()
        side = asyncio.create_task(others())
        flood = await asyncio.gather(*(one(limited) for _ in range(FLOOD)))
        window = time.monotonic() - start
        done.set()
        return flood, await side, window


def _wait_until_every_gateway_knows(call) -> None:
    """Each gateway replica re-reads the key store within its TTL: wait until a run of
    requests (spread over the replicas) is no longer refused as an unknown key."""
    wait_for_condition(lambda: all(call().status_code != 401 for _ in range(10)), timeout=30)


def test_a_flooded_key_gets_429_within_its_global_quota_and_others_do_not(served):
    store = KeyStore(keys_uri(served.settings.storage_root))
    quota = Quota(rate=5, burst=5)
    limited, _ = store.create("flooded", rate=quota.rate, burst=quota.burst)
    other, _ = store.create("bystander", rate=1000, burst=1000)
    url = served.predict_url
    # the gateways see new keys within a fraction of a second; the limiter starts on first use
    wait_for_condition(lambda: _post(url, limited).status_code == 200, timeout=60)
    wait_for_condition(lambda: _post(url, other).status_code == 200, timeout=60)

    flood, others, window = asyncio.run(_flood(url, limited, other))

    statuses = [r.status_code for r in flood]
    assert set(statuses) <= {200, 429}, statuses
    refused = [r for r in flood if r.status_code == 429]
    assert refused, "a flood 20x over the quota must be refused"
    for r in refused:
        assert int(r.headers["Retry-After"]) >= 1
        body = r.json()
        assert body["error"] == "rate_limited" and body["request_id"] and body["detail"]
    replicas, lease_s = _gateway(served.settings)
    bound = quota.burst + quota.rate * window + replicas * quota.batch(lease_s)
    admitted = statuses.count(200)
    assert 1 <= admitted <= bound, f"{admitted} admitted in {window:.1f} s; bound {bound:.1f}"
    assert [r.status_code for r in others] == [200] * len(others)
    # Retry-After is honest: the key is served again once its bucket refills
    wait_for_condition(lambda: _post(url, limited).status_code == 200, timeout=10)


def test_a_key_without_the_predict_scope_gets_403(served):
    store = KeyStore(keys_uri(served.settings.storage_root))
    admin_only, _ = store.create("ops", scopes=("admin",))
    _wait_until_every_gateway_knows(lambda: _post(served.predict_url, admin_only))
    r = _post(served.predict_url, admin_only)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert "predict" in r.json()["detail"]


def test_the_quota_check_adds_little_latency(served):
    """Interleaved GET /v1/models with a key without quota and one with a large quota."""
    store = KeyStore(keys_uri(served.settings.storage_root))
    limited, _ = store.create("latency", rate=10_000, burst=10_000)
    url = f"{served.settings.serve_url}/v1/models"
    _wait_until_every_gateway_knows(lambda: httpx.get(url, headers={"X-API-Key": limited}))
    times: dict[str, list[float]] = {"plain": [], "quota": []}
    with httpx.Client(timeout=10) as client:
        for _ in range(60):
            for label, key in (("plain", served.key), ("quota", limited)):
                start = time.perf_counter()
                assert client.get(url, headers={"X-API-Key": key}).status_code == 200
                times[label].append(time.perf_counter() - start)
    plain, with_quota = (statistics.median(times[k]) * 1e3 for k in ("plain", "quota"))
    print(f"\nGET /v1/models median: {plain:.2f} ms without quota, {with_quota:.2f} ms with")
    assert with_quota - plain < max(5.0, 0.5 * plain), (plain, with_quota)
