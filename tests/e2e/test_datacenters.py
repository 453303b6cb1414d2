"""Datacenters inside one cluster, on real Ray nodes (issue 12; RELIABILITY.md F9, B11).

`aimass up --datacenters us-east,eu-west` starts the head and one raylet per datacenter (own
loopback address, region and zone labels); `aimass deploy` places one Predictor per
datacenter from serve_apps/serve_config.datacenters.yaml. Loopback traffic names its
origin as the edge does (``X-Origin-Datacenter``) and every answer lands in a ledger with the
region that served it (``X-Served-Region``):

- local-first: while neither datacenter is saturated, >= 95 % of each origin's requests are
  served at home;
- saturation: more requests in flight from one origin than its datacenter's replicas take
  (their concurrency and queue are made small here) spill to the other; none fails;
- failover: `aimass datacenter stop eu-west` under traffic keeps >= 99 % success, and traffic
  returns to eu-west once `aimass datacenter start eu-west` brought its node back;
- residency: a key restricted to eu-west is never served elsewhere, also while eu-west is
  down, when it gets 503 with Retry-After naming the restriction;
- bad input: `aimass deploy` of a config naming an unknown datacenter fails, naming the field.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from ray._common.test_utils import wait_for_condition

from cluster import local
from cluster.cli.deploy import wait_for_version
from cluster.settings import Settings, get_settings
from models.registry import CHAMPION, Registry
from serve_apps.keys import KeyStore, keys_uri

pytestmark = pytest.mark.timeout(1200)

DATACENTERS = ("us-east", "eu-west")
DC_CONFIG = Path(__file__).parents[2] / "serve_apps" / "serve_config.datacenters.yaml"
ONE_DIGIT = {"instances": [[0.0, 0.0, 5.0, 13.0] + [4.0] * 60]}
# Each datacenter takes 2 requests at a time and queues 2 more (one Gateway, so one queue):
# a closed loop of more than 4 from one origin saturates it, and up to 8 fit in both.
SLOTS_PER_DATACENTER = 4


def _aimass(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The aimass CLI as a user runs it, against this module's cluster."""
    aimass = str(Path(sys.executable).with_name("aimass"))
    env = {**os.environ, **settings.as_env()}
    proc = subprocess.run([aimass, *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def two_datacenter_config(settings: Settings) -> dict:
    """serve_config.datacenters.yaml for us-east and eu-west, each Predictor with one fixed
    replica of small capacity (see SLOTS_PER_DATACENTER), and one Gateway."""
    config = yaml.safe_load(DC_CONFIG.read_text())
    app = config["applications"][0]
    app["args"]["datacenters"] = list(DATACENTERS)
    kept = []
    for d in app["deployments"]:
        if d["name"] == "Gateway":
            d["num_replicas"] = 1
        elif d["name"].startswith("Predictor-"):
            if d["name"].removeprefix("Predictor-") not in DATACENTERS:
                continue
            d.pop("autoscaling_config")
            d.update(num_replicas=1, max_ongoing_requests=2, max_queued_requests=2)
        kept.append(d)
    app["deployments"] = kept
    return config


@dataclass(frozen=True)
class DatacenterCluster:
    settings: Settings
    key: str  # may be served anywhere
    resident_key: str  # restricted to eu-west
    config_path: Path

    @property
    def predict_url(self) -> str:
        return f"{self.settings.serve_url}/v1/models/digits/predict"


@pytest.fixture(scope="module")
def dc_cluster(new_cluster_env, package_factory):
    """A cluster of its own shape: `aimass up --datacenters us-east,eu-west`, an untrained
    digits CNN as champion (weights do not matter to routing), two keys, and the
    two-datacenter config deployed with `aimass deploy`."""
    env = new_cluster_env("dc-home")
    home = Path(env["AIMASS_HOME"])
    saved = dict(os.environ)
    os.environ.update(env)
    settings = get_settings()
    local.connect_clients(settings)  # this process's Ray clients: this cluster, its token
    try:
        _aimass(settings, "up", "--datacenters", ",".join(DATACENTERS), "--datacenter-cpus", "2")
        registry = Registry.from_settings(settings)
        run = registry.client.create_run(registry.experiment("digits"))
        info = registry.register("digits", run.info.run_id, package_factory("dc-digits"))
        registry.set_alias("digits", CHAMPION, info.version)
        store = KeyStore(keys_uri(settings.storage_root))
        key, _ = store.create("dc-e2e", ("predict",))
        resident, _ = store.create("dc-resident", ("predict",), datacenters=("eu-west",))
        path = home / "serve_config.two-datacenters.yaml"
        path.write_text(yaml.safe_dump(two_datacenter_config(settings)))
        out = _aimass(settings, "deploy", str(path)).stdout
        assert "models" in out, out
        wait_for_version(settings, key, "digits", info.version)
        yield DatacenterCluster(settings, key, resident, path)
    finally:
        _aimass(settings, "down", check=False)
        os.environ.clear()
        os.environ.update(saved)


class RegionLedger:
    """Closed-loop traffic on loopback: ``in_flight`` clients per origin post one digit back
    to back until stopped; one entry per request: (origin, status, served region, body)."""

    def __init__(self, url: str, key: str, origins: dict[str, int], limit_s: float = 120):
        self.url, self.key, self.origins, self.limit_s = url, key, origins, limit_s
        self.entries: list[tuple[str, int | str, str | None, str]] = []
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RegionLedger:
        self._running.set()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._running.clear()
        self._thread.join(timeout=60)

    def wait_for(self, answered: int, timeout: float = 120) -> None:
        start, deadline = len(self.entries), time.monotonic() + timeout
        while len(self.entries) - start < answered:
            assert time.monotonic() < deadline, f"only {len(self.entries) - start} answers"
            time.sleep(0.1)

    def since(self, mark: int) -> list[tuple]:
        return self.entries[mark:]

    async def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        async with httpx.AsyncClient(timeout=30) as http:

            async def client(origin: str) -> None:
                headers = {"X-API-Key": self.key, "X-Origin-Datacenter": origin}
                while self._running.is_set() and time.monotonic() < deadline:
                    try:
                        r = await http.post(self.url, json=ONE_DIGIT, headers=headers)
                        entry = (origin, r.status_code, r.headers.get("x-served-region"), r.text)
                    except httpx.HTTPError as err:
                        entry = (origin, type(err).__name__, None, str(err))
                    self.entries.append((entry[0], entry[1], entry[2], entry[3][:300]))

            clients = [client(o) for o, n in self.origins.items() for _ in range(n)]
            await asyncio.gather(*clients)


def _served_at(entries: list[tuple]) -> Counter:
    return Counter((origin, served) for origin, status, served, _ in entries if status == 200)


def _failed(entries: list[tuple]) -> list[tuple]:
    return [e for e in entries if e[1] != 200]


def _refused(entries: list[tuple]) -> bool:
    return any(e[1] == 503 and "restricted to eu-west" in e[3] for e in entries)


def _replicas_running(settings: Settings, deployment: str) -> int:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(settings.dashboard_url).get_serve_details()
    replicas = details["applications"]["models"]["deployments"][deployment]["replicas"]
    return sum(1 for r in replicas if r["state"] == "RUNNING")


def test_each_origin_is_served_at_home_while_not_saturated(dc_cluster):
    with RegionLedger(
        dc_cluster.predict_url, dc_cluster.key, dict.fromkeys(DATACENTERS, 1)
    ) as load:
        load.wait_for(200)
    entries = load.entries
    assert _failed(entries) == [], _failed(entries)[:5]
    served = _served_at(entries)
    for origin in DATACENTERS:
        total = sum(n for (o, _), n in served.items() if o == origin)
        local = served[(origin, origin)]
        print(f"{origin}: {local}/{total} served at home")
        assert local / total >= 0.95, served


def test_a_saturated_datacenter_spills_to_the_other_and_no_request_fails(dc_cluster):
    # More than us-east takes, with room to spare in eu-west: at 7 of the 8 slots of both,
    # a request could find eu-west's queue full too (the routers' views of the replicas'
    # queues lag by a request or so).
    in_flight = SLOTS_PER_DATACENTER + 2
    with RegionLedger(dc_cluster.predict_url, dc_cluster.key, {"us-east": in_flight}) as load:
        load.wait_for(300)
    entries = load.entries
    assert _failed(entries) == [], _failed(entries)[:5]
    served = _served_at(entries)
    print(f"from us-east at {in_flight} in flight: {dict(served)}")
    assert served[("us-east", "us-east")] > served[("us-east", "eu-west")] > 0, served


def test_losing_a_datacenter_fails_over_and_traffic_returns(dc_cluster):
    settings = dc_cluster.settings
    origins = dict.fromkeys(DATACENTERS, 1)
    with (
        RegionLedger(dc_cluster.predict_url, dc_cluster.key, origins, limit_s=300) as load,
        RegionLedger(
            dc_cluster.predict_url, dc_cluster.resident_key, {"eu-west": 1}, limit_s=300
        ) as resident,
    ):
        load.wait_for(40)
        resident.wait_for(20)
        lost_at = len(load.entries)
        _aimass(settings, "datacenter", "stop", "eu-west")
        wait_for_condition(lambda: _replicas_running(settings, "Predictor-eu-west") == 0, 60)
        load.wait_for(60)  # eu-west's requests answered elsewhere
        down = load.since(lost_at)
        # The resident key is refused, naming its restriction, not served in us-east.
        wait_for_condition(lambda: _refused(resident.entries), 30)

        _aimass(settings, "datacenter", "start", "eu-west")
        wait_for_condition(lambda: _replicas_running(settings, "Predictor-eu-west") == 1, 180, 1000)
        # Fail back: once eu-west's ejection (10 s after its failed answers) lapses, one
        # request tries it again, and a success brings its traffic home.
        running_at = len(load.entries)
        wait_for_condition(
            lambda: _served_at(load.since(running_at))[("eu-west", "eu-west")] > 0, 30
        )
        back_at = len(load.entries)
        load.wait_for(80)
    through = load.since(lost_at)
    success = sum(1 for e in through if e[1] == 200) / len(through)
    print(
        f"failover: {len(through)} requests, {success:.2%} answered; while down "
        f"{dict(_served_at(down))}; after {dict(_served_at(load.since(back_at)))}"
    )
    assert success >= 0.99, _failed(through)[:5]
    assert _served_at(down)[("eu-west", "us-east")] > 0  # eu-west's traffic went to us-east
    back = _served_at(load.since(back_at))
    assert back[("eu-west", "eu-west")] >= 0.9 * sum(
        n for (o, _), n in back.items() if o == "eu-west"
    )

    # Residency held throughout: served in eu-west or refused with a 503 naming why.
    assert {served for _, status, served, _ in resident.entries if status == 200} == {"eu-west"}
    statuses = Counter(status for _, status, _, _ in resident.entries)
    # (A request already at eu-west's replica when its node died may time out: 504.)
    assert set(statuses) <= {200, 503, 504}, statuses


def test_deploying_to_an_unknown_datacenter_fails_naming_the_field(dc_cluster):
    config = yaml.safe_load(dc_cluster.config_path.read_text())
    config["applications"][0]["args"]["datacenters"] = ["us-east", "mars-1"]
    path = dc_cluster.config_path.with_name("serve_config.unknown-datacenter.yaml")
    path.write_text(yaml.safe_dump(copy.deepcopy(config)))
    proc = _aimass(dc_cluster.settings, "deploy", str(path), check=False)
    assert proc.returncode != 0
    assert (
        "args.datacenters[1]" in proc.stderr + proc.stdout and "mars-1" in proc.stderr + proc.stdout
    )
