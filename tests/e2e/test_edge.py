"""Two real Ray clusters behind the edge (RELIABILITY.md F10, N5): us-east and eu-west, each
its own `aimass up` on private ports and homes, the model API deployed with `serve deploy`,
a model registered directly in their shared registry, and the edge (HAProxy) in front (the
session's `fleet`, tests/e2e/conftest.py).

- Each region's entry point is served by its own cluster; the global one splits by weight.
- Under steady load, stopping eu-west (`cluster.local.down`) moves its region's traffic to
  us-east within FAILOVER_BOUND_S with >= 99 % success (client retries allowed); bringing
  it back (up + serve deploy, the model still in the registry) restores the split within
  RESTORE_BOUND_S of its readiness.
- A key restricted to eu-west is never served by us-east: 0 residency violations in the
  ledger, the outage included (its requests get the edge's 503 + Retry-After instead).

Keys: made in us-east's store, replicated to eu-west's (tests/e2e/multicluster.py).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import httpx
import pytest
from multicluster import ONE_DIGIT, REGIONS, Fleet, Ledger, Stream  # tests/e2e's own module

from cluster import edge
from cluster.cli.edge import key_store_residency
from cluster.local import free_port

FAILOVER_BOUND_S = 10.0
RESTORE_BOUND_S = 10.0


@pytest.fixture(scope="module")
def edge_up(fleet: Fleet, tmp_path_factory):
    """The edge in front of both: one entry point per region and a global one; yields
    (spec, folder, {entry point: URL of the predict route})."""
    clusters = fleet.clusters
    ports = {name: free_port() for name in (*REGIONS, "global")}
    spec = edge.EdgeSpec.model_validate(
        {
            "clusters": [
                {"name": f"{dc}-1", "datacenter": dc, "url": c.settings.serve_url}
                for dc, c in clusters.items()
            ],
            "frontends": [{"datacenter": dc, "bind": ports[dc]} for dc in REGIONS],
            "global": {"bind": ports["global"]},
            "health": {"interval_s": 0.5, "fall": 2, "rise": 2, "ready_model": "digits"},
            "outliers": {"consecutive_5xx": 3},
            "timeouts": {"server_s": 15},
            "residency": {"key_stores": [clusters["us-east"].settings.storage_root]},
        }
    )
    folder = tmp_path_factory.mktemp("edge")
    edge.up(spec, folder, edge.residency_of(spec, *key_store_residency(spec)))
    urls = {
        name: f"http://127.0.0.1:{port}/v1/models/digits/predict" for name, port in ports.items()
    }
    try:
        _wait(lambda: {r.status for r in edge.runtime(folder).servers()} == {"UP"}, 60, "UP")
        yield spec, folder, urls
    finally:
        edge.down(folder)


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.2)


def _served_by(url: str, key: str, n: int) -> Counter:
    with httpx.Client(timeout=30) as http:
        return Counter(
            http.post(url, json=ONE_DIGIT, headers={"X-API-Key": key}).headers.get(
                "x-served-region"
            )
            for _ in range(n)
        )


def test_each_region_is_served_at_home_and_the_global_entry_splits(fleet, edge_up):
    keys = fleet.keys
    _, _, urls = edge_up
    assert _served_by(urls["us-east"], keys["any"], 6) == {"us-east": 6}
    assert _served_by(urls["eu-west"], keys["any"], 6) == {"eu-west": 6}
    assert _served_by(urls["global"], keys["any"], 10) == {"us-east": 5, "eu-west": 5}
    # a key restricted to eu-west is served there, wherever it enters
    assert _served_by(urls["us-east"], keys["eu"], 4) == {"eu-west": 4}
    # the request id goes through the edge and back
    with httpx.Client(timeout=30) as http:
        r = http.post(
            urls["eu-west"],
            json=ONE_DIGIT,
            headers={"X-API-Key": keys["any"], "X-Request-ID": "e2e-1"},
        )
    assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-1"


def test_f10_a_stopped_cluster_fails_over_and_comes_back(fleet, edge_up):
    keys = fleet.keys
    _, _, urls = edge_up
    eu = fleet.clusters["eu-west"]
    champion = fleet.registry.resolve("digits@champion").version
    streams = {
        "eu-west": Stream(urls["eu-west"], keys["any"], in_flight=2),
        "us-east": Stream(urls["us-east"], keys["any"]),
        "restricted": Stream(urls["eu-west"], keys["eu"]),
    }
    with Ledger(streams, retries=3) as load:
        load.wait_for(40)
        stopped_at = time.monotonic()
        eu.down()  # every process of the eu-west cluster ends (SIGTERM, then SIGKILL)
        down_at = time.monotonic()
        # the region's clients are answered by us-east
        load.wait_until(
            lambda ledger: _last(ledger, "eu-west", 10, stopped_at) == {(200, "us-east")},
            60,
            "eu-west's traffic on us-east",
        )
        load.wait_for(30)  # through the outage
        restart_at = time.monotonic()
        eu.up()
        eu.deploy(keys["any"], champion)  # the model is still in the shared registry
        ready_at = time.monotonic()
        back_at = load.wait_until(
            lambda ledger: any(e.region == "eu-west" for e in ledger.of("eu-west", ready_at)),
            60,
            "eu-west serving its region again",
        )
        load.wait_for(30)

    region = load.of("eu-west")
    outage = [e for e in region if stopped_at <= e.sent < restart_at]
    not_moved = [e for e in outage if (e.status, e.region) != (200, "us-east")]
    moved_at = max((e.answered for e in not_moved), default=stopped_at)
    failover_s, restore_s = moved_at - stopped_at, back_at - ready_at
    restricted = load.of("restricted")
    violations = [e for e in restricted if e.status == 200 and e.region != "eu-west"]
    refused = [e for e in restricted if stopped_at <= e.sent < restart_at and e.status == 503]
    success = load.success_rate("eu-west", "us-east")
    print(
        f"\n[edge F10] {len(load.entries)} requests; success {success:.2%}"
        f" (eu-west entry {load.success_rate('eu-west'):.2%}, us-east entry "
        f"{load.success_rate('us-east'):.2%}); failover {failover_s:.1f} s (down took "
        f"{down_at - stopped_at:.1f} s); restore {restore_s:.1f} s after ready (restart + "
        f"deploy {ready_at - restart_at:.0f} s); restricted: {len(restricted)} requests, "
        f"{len(refused)} refused with 503 in the outage, {len(violations)} violations;"
        f" attempts {Counter(e.attempts for e in load.entries)}; failed: "
        f"{Counter((e.stream, e.status, e.body[:70]) for e in load.entries if e.status != 200)}"
    )
    assert success >= 0.99, [
        e for e in load.entries if e.stream != "restricted" and e.status != 200
    ][:5]
    assert failover_s <= FAILOVER_BOUND_S, not_moved[-5:]
    assert restore_s <= RESTORE_BOUND_S
    assert violations == []  # N5: never served outside eu-west, the outage included
    assert refused, "the restricted key's requests during the outage were not refused"
    for e in refused:
        body = json.loads(e.body)
        assert set(body) == {"error", "detail", "request_id"} and body["request_id"] == e.rid
        assert body["error"] == "no_cluster" and fleet.eu_key_id in body["detail"]
    # none of the restricted key's requests failed any other way
    assert {e.status for e in restricted} <= {200, 503}
    # the split is back: the global entry point reaches both clusters again
    _, _, urls = edge_up
    assert set(_served_by(urls["global"], keys["any"], 10)) == set(REGIONS)
    assert set(_served_by(urls["eu-west"], keys["any"], 4)) == {"eu-west"}


def _last(ledger: Ledger, stream: str, n: int, since: float) -> set:
    recent = ledger.of(stream, since)[-n:]
    return {(e.status, e.region) for e in recent} if len(recent) == n else set()
