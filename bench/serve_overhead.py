"""Serve benchmark, overhead-bound: a tiny model through the whole gateway vs plain FastAPI.

    .venv/bin/python -m bench.serve_overhead             # ~3 min, plus ~3 min to train once
    .venv/bin/python -m bench.serve_overhead --duration 5 --rounds 1   # a quick smoke run

The model is the digits CNN (``digits`` in the registry; ~0.1 ms per instance in ONNX
Runtime, so the HTTP path is what is measured). When the registry has no ``digits``
champion, the dataset is ingested and ``digits_cnn_smoke`` (3 epochs, no accuracy gate:
weights do not change a request's cost) trained as jobs, the way ``ray job submit`` runs them.
Both sides answer ``POST /v1/models/digits/predict`` with one 64-pixel test image per request
and an API key, under the same load:

- ours: the model API from ``serve_apps/serve_config.yaml`` deployed with ``serve deploy``:
  Serve's proxy, the Gateway (API key, quota check, body cap, validation, routing table from
  the release controller, outcomes, metrics) and the Predictor (``@serve.multiplexed``,
  ``@serve.batch``, ONNX Runtime);
- baseline: plain FastAPI + uvicorn, one worker process started here on 127.0.0.1, running
  the gateway's handler in-process (``bench._serve_load.baseline_app``: the same KeyStore
  check, pydantic validation and response model, one ONNX Runtime call per request with the
  Predictor's thread count). It runs at the niceness Ray gives the Gateway replicas
  (``--no-match-nice`` keeps this process's): on a shared machine a nice-0 server would
  win CPU from the niced replicas and the ratio would measure the scheduler.
- second baseline (``--no-litserve`` leaves it out): LitServe, the one-node server a user
  would try first, serving the same ONNX file (``bench._litserve_baseline``: one worker,
  dynamic batching up to 16 requests in 2 ms, its X-API-Key check on, the same niceness).
  ``ratio_vs_litserve`` = ours req/s / LitServe's; goal >= 1.0.
- ``--floor``: also the baseline's handler in one Serve replica, deployed beside the model
  API as the ``floor`` application (``bench._serve_floor``), called at ``/floor/v1/...``
  through the same Serve ingress (the proxy, or HAProxy with direct ingress). Not a goal:
  ``floor_ratio`` (its req/s / plain FastAPI's) is the most any design on a Serve ingress
  reaches on this machine, i.e. what Serve's own path costs; the rest of the gap is ours.

The client (``bench._serve_load.run_load``: raw asyncio streams on uvloop, one keep-alive
connection per concurrent request) runs ``--concurrency`` requests back to back, warmed up,
then alternating ours / baseline ``--rounds`` times for ``--duration`` s each. Its own
ceiling (against a server answering a canned response) is reported as ``client_ceiling``.

``ratio`` = ours req/s / baseline req/s. Goal: >= 0.5 and ours p50 at most 2 ms above the
baseline's (``p50_delta_ms``). The cluster is a private one (temp home, free ports) started
and stopped here, or with ``--existing`` the running cluster of the current ``AIMASS_*``
settings. ``RAY_SERVE_*`` variables set when this starts reach a private cluster and are
reported (``serve_env``): that is how to measure Serve's own switches.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench import _serve_load as sl
from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results

NAME = "serve_overhead"
MODEL = "digits"
TRAIN = "--config digits_cnn_smoke"
RATIO_GOAL = 0.5
P50_SLACK_MS = 2.0
LITSERVE_GOAL = 1.0


def report(m: dict) -> dict:
    ours, base = m["ours"], m["baseline"]
    ratio = ours["req_per_s"] / base["req_per_s"]
    p50_delta = ours["p50_ms"] - base["p50_ms"]
    goal_met = ratio >= RATIO_GOAL and p50_delta <= P50_SLACK_MS
    vs_litserve = {}
    if "litserve" in m:
        lit = ours["req_per_s"] / m["litserve"]["req_per_s"]
        vs_litserve = {"ratio_vs_litserve": round(lit, 3)}
        goal_met = goal_met and lit >= LITSERVE_GOAL
    if "serve_floor" in m:  # not a goal: what Serve's own path leaves of plain FastAPI
        vs_litserve["floor_ratio"] = round(m["serve_floor"]["req_per_s"] / base["req_per_s"], 3)
    goal = f">= {RATIO_GOAL}x req/s and p50 within +{P50_SLACK_MS:g} ms"
    return {
        "name": NAME,
        "ratio": round(ratio, 3),
        **vs_litserve,
        "goal": goal + (f"; >= {LITSERVE_GOAL:g}x LitServe's req/s" if vs_litserve else ""),
        "goal_met": goal_met,
        "p50_delta_ms": round(p50_delta, 2),
        "p99_delta_ms": round(ours["p99_ms"] - base["p99_ms"], 2),
        **m,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sl.add_load_args(parser, concurrency=16, litserve=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with cluster(args.existing) as settings, tempfile.TemporaryDirectory() as tmp:
        m = sl.measure(settings, MODEL, TRAIN, args, Path(tmp))
    row = emit(report(m))
    log(f"wrote {write_results(NAME, [row])}")


if __name__ == "__main__":
    main()
