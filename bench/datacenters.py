"""Datacenter-aware routing vs Serve's default routing, on one multi-node cluster.

    .venv/bin/python -m bench.datacenters                 # ~10 min, training included
    .venv/bin/python -m bench.datacenters --duration 10   # a quicker, noisier run

A private cluster with three datacenters (``aimass up --datacenters us-east,eu-west,ap-south``:
the head and one real Ray node per datacenter, each with its region label) serves the digits
CNN (trained as a job, ``digits_cnn_smoke``, when the registry has none) two ways, one after
the other, under the same open-loop load from two origins (``X-Origin-Datacenter`` us-east
and eu-west, as the edge names them), each at ``--load`` (default 50 %) of one datacenter's
measured capacity:

- ours: serve_apps/serve_config.datacenters.yaml, one ``Predictor-<dc>`` per datacenter; the
  gateway serves each request at its origin and spills to the nearest other one only when
  the origin's queue is full;
- baseline: the same config with one ``Predictor`` deployment of one replica per datacenter
  (``label_selector`` ``in(...)``, ``max_replicas_per_node: 1``) and Serve's default request
  router (power of two choices over all replicas, which sees no regions).

Every answer says where it was served (``X-Served-Region``). A request served outside its
origin is a cross-region hop; its modelled latency adds the configured round trip between
the two (``cluster.topology``: this machine cannot delay loopback, so the WAN is modelled,
not injected). Gateway CPU per answered request is read from the Gateway replicas' processes,
less what they spend idle over as long (their polls and flushes, measured just before).

Each datacenter's capacity is its Predictor's: one replica taking ``max_ongoing_requests: 2``
in batches that wait ``batch_wait_timeout_s: 0.1`` (a latency-bound model server), so a
datacenter saturates before the host's two shared cores do. It is measured first: closed
loop with a key restricted to us-east. Last, ours takes twice that from us-east alone: the
excess must spill, and no request may fail.

Goals: cross-region hops ours / baseline <= 0.1 (``ratio``); gateway CPU per request within
+10 % of the baseline's; 0 failed requests at 2x one datacenter's capacity.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml

from bench import _serve_load as sl
from bench._cluster import cluster, log
from bench._open_loop import Answer, arrivals, run_together
from bench._report import emit, machine_info, write_results

NAME = "datacenters"
DATACENTERS = ("us-east", "eu-west", "ap-south")
ORIGINS = ("us-east", "eu-west")
DC_CONFIG = sl.REPO / "serve_apps" / "serve_config.datacenters.yaml"
HOP_GOAL, CPU_SLACK = 0.1, 0.10
PREDICTOR = {  # one replica per datacenter, latency-bound (see the docstring)
    "num_replicas": 1,
    "max_ongoing_requests": 2,
    "max_queued_requests": 2,  # a short queue: the excess spills rather than waits
}
BATCH_WAIT_S = 0.1


def _predictor(d: dict) -> dict:
    d.pop("autoscaling_config", None)
    d.update(copy.deepcopy(PREDICTOR))
    d["user_config"] = {**d["user_config"], "batch_wait_timeout_s": BATCH_WAIT_S}
    return d


def ours_config(settings) -> dict:
    from cluster.cli.deploy import rendered_config

    config = rendered_config(settings, DC_CONFIG)
    app = config["applications"][0]
    app["args"]["datacenters"] = list(DATACENTERS)
    for d in app["deployments"]:
        if d["name"].startswith("Predictor-"):
            _predictor(d)
    return config


def baseline_config(settings) -> dict:
    """One Predictor with a replica in each datacenter, routed by Serve alone."""
    config = ours_config(settings)
    app = config["applications"][0]
    app.pop("args")
    kept = [d for d in app["deployments"] if not d["name"].startswith("Predictor-")]
    one = _predictor(copy.deepcopy(next(d for d in app["deployments"] if "Predictor" in d["name"])))
    one.update(name="Predictor", num_replicas=len(DATACENTERS), max_replicas_per_node=1)
    one["ray_actor_options"]["label_selector"] = {
        "ray.io/availability-region": f"in({','.join(DATACENTERS)})"
    }
    app["deployments"] = [*kept, one]
    return config


def deploy(settings, config: dict, folder: Path, served: sl.Served) -> None:
    from cluster.cli.deploy import checked_deploy, wait_for_version

    path = folder / "serve_config.bench.yaml"
    path.write_text(yaml.safe_dump(config))
    checked_deploy(settings, path)
    wait_for_version(settings, served.key, served.model, served.version)
    wait_ready(settings, sum(PREDICTOR["num_replicas"] for _ in DATACENTERS))


def wait_ready(settings, replicas: int, timeout_s: float = 120) -> None:
    """Until every gateway replica asked sees ``replicas`` Predictor replicas running
    (``/readyz``, which the edge reads too)."""
    deadline, seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        r = httpx.get(f"{settings.serve_url}/readyz", timeout=5)
        seen = r.json().get("replicas") if r.status_code == 200 else r.text
        if isinstance(seen, dict) and sum(seen.values()) >= replicas:
            return
        time.sleep(0.5)
    raise RuntimeError(f"Predictor replicas not ready within {timeout_s:.0f} s: {seen}")


def gateway_processes(settings) -> list[psutil.Process]:
    from cluster.local import cluster_processes

    found = []
    for proc in cluster_processes(settings):
        with contextlib.suppress(psutil.Error):
            if "ServeReplica:models:Gateway" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def _cpu_s(procs: list[psutil.Process]) -> float:
    return sum(cpu for _, cpu in sl.cpu_seconds(procs).values())


def _idle_cpu_per_s(procs: list[psutil.Process], seconds: float = 10) -> float:
    """The gateways' CPU seconds per second with no request: their polls of the Serve
    controller, metrics and the release client's flushes, which a low request rate would
    otherwise spread over few requests. Subtracted: what is left is the per-request cost."""
    before = _cpu_s(procs)
    time.sleep(seconds)
    return (_cpu_s(procs) - before) / seconds


def capacity(settings, served: sl.Served, seconds: float) -> float:
    """Requests/s us-east answers alone: closed loop with a key restricted to it."""
    from serve_apps.keys import KeyStore

    key, record = KeyStore(served.keys_uri).create("bench-us-east", datacenters=("us-east",))
    body = json.dumps({"instances": [[0.0] * 64]}).encode()
    request = sl.post_request(settings.serve_port, "/v1/models/digits/predict", body, key)
    request = request.replace(b"\r\n\r\n", b"\r\nX-Origin-Datacenter: us-east\r\n\r\n", 1)
    sl.run_load(settings.serve_port, [request], 4, 5)  # warm
    r = sl.run_load(settings.serve_port, [request], 4, seconds)
    KeyStore(served.keys_uri).revoke(record.id)
    log(f"one datacenter: {r.ok / r.seconds:.1f} req/s, errors {r.errors or 0}")
    return r.ok / r.seconds


def load_from(settings, served: sl.Served, rates: dict[str, float], seconds: float) -> dict:
    """Open-loop load from each origin at its rate; the ledger's figures and gateway CPU."""
    from cluster.topology import Topology

    url = f"http://{sl.HOST}:{settings.serve_port}/v1/models/{served.model}/predict"
    body = {"instances": [[0.0] * 64]}
    procs = gateway_processes(settings)
    idle_per_s = _idle_cpu_per_s(procs)
    before, t0 = _cpu_s(procs), time.monotonic()
    ledgers = run_together(
        *(arrivals(url, served.key, body, rate, seconds, origin) for origin, rate in rates.items())
    )
    spent = _cpu_s(procs) - before - idle_per_s * (time.monotonic() - t0)
    answers: list[Answer] = [a for ledger in ledgers for a in ledger]
    ok = [a for a in answers if a.status == 200]
    hops = [a for a in ok if a.served != a.origin]
    topology = Topology.of(DATACENTERS, None)
    modelled = [a.latency_ms + topology.rtt(a.origin, a.served) for a in ok if a.served]
    return {
        "requests": len(answers),
        "failed": dict(Counter(str(a.status) for a in answers if a.status != 200)),
        "cross_region_hops": len(hops),
        "hop_share": round(len(hops) / max(len(ok), 1), 4),
        "served": dict(Counter(f"{a.origin}->{a.served}" for a in ok)),
        "p50_ms": round(float(np.percentile([a.latency_ms for a in ok], 50)), 2) if ok else None,
        "modelled_mean_ms": round(float(np.mean(modelled)), 2) if modelled else None,
        "gateway_cpu_ms_per_request": round(1e3 * spent / max(len(ok), 1), 3),
        "gateways": len(procs),
    }


def report(one_dc: float, ours: dict, base: dict, spill: dict, args) -> dict:
    ratio = ours["cross_region_hops"] / max(base["cross_region_hops"], 1)
    cpu = ours["gateway_cpu_ms_per_request"] / base["gateway_cpu_ms_per_request"]
    spill_failed = sum(spill["failed"].values())
    return {
        "name": NAME,
        "ratio": round(ratio, 4),
        "goal": f"hops <= {HOP_GOAL}x the default router's, gateway CPU/request within "
        f"+{CPU_SLACK:.0%}, 0 failed at 2x one datacenter's capacity",
        "goal_met": ratio <= HOP_GOAL and cpu <= 1 + CPU_SLACK and spill_failed == 0,
        "cpu_ratio": round(cpu, 3),
        "spill_failed": spill_failed,
        "one_datacenter_req_per_s": round(one_dc, 1),
        "load": {"fraction_of_one_datacenter": args.load, "seconds": args.duration},
        "ours": ours,
        "baseline": base,
        "at_2x_one_datacenter": spill,
        "datacenters": list(DATACENTERS),
        "predictor": {**PREDICTOR, "batch_wait_timeout_s": BATCH_WAIT_S},
        "machine": machine_info(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=40.0, help="seconds per load phase")
    parser.add_argument("--load", type=float, default=0.5, help="of one datacenter, per origin")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with (
        cluster(existing=False, datacenters=DATACENTERS) as settings,
        tempfile.TemporaryDirectory() as tmp,
    ):
        served = sl.serve_champion(settings, "digits", "--config digits_cnn_smoke", Path(tmp))
        deploy(settings, ours_config(settings), Path(tmp), served)
        one_dc = capacity(settings, served, args.duration / 2)
        rates = dict.fromkeys(ORIGINS, args.load * one_dc)
        ours = load_from(settings, served, rates, args.duration)
        log(f"ours: {ours}")
        spill = load_from(settings, served, {"us-east": 2 * one_dc}, args.duration)
        log(f"ours at 2x one datacenter: {spill}")
        deploy(settings, baseline_config(settings), Path(tmp), served)
        base = load_from(settings, served, rates, args.duration)
        log(f"baseline: {base}")
    row = emit(report(one_dc, ours, base, spill, args))
    log(f"wrote {write_results(NAME, [row])}")


if __name__ == "__main__":
    main()
