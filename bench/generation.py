"""Generation benchmark: tokens/s through the model API with the KV cache vs without, and
8 concurrent streams (batched decode steps) vs one.

    .venv/bin/python -m bench.generation             # ~3 min on 2 cores
    .venv/bin/python -m bench.generation --layers 4 --embd 256 --repeats 1   # quicker

Both go through the real HTTP path: ``POST /v1/models/gpt_bench/generate`` (Serve's proxy,
the Gateway, the Generator) with an API key, server-sent events read as they come. The
model is an untrained GPT (weights do not change a token's cost) registered as
``gpt_bench`` and promoted: the "125m" shape scaled down, ``--layers`` x ``--embd``
(6 x 384, 6 heads: 10.9 M parameters), ASCII vocabulary (128: one token, one event) and
block_size 512, so prompt + 256 tokens never slide the window. The Generator runs with the
serve_config.yaml settings (1 torch thread).

- ``kv_cache``: one stream of ``--tokens`` (256) after a 64-character prompt, with the
  cache (``kv_cache: true``, the default) vs the Generator redeployed with ``kv_cache:
  false`` (every token recomputes its whole context: the uncached path). ``ratio`` =
  cached tokens/s / uncached tokens/s. Goal: >= 5.
- ``batching``: 8 concurrent streams (distinct prompts and seeds) vs one, with the cache.
  ``batching_ratio`` = aggregate tokens/s of the 8 (all tokens over the wall time from the
  first request to the last ``done``) / one stream's tokens/s. Goal: >= 3.

tokens/s counts every token from the request to its ``done`` event, prefill included.
Each cached figure is the median of ``--repeats`` runs; the uncached one, ~30x slower,
is run once. The cluster is private (started and stopped here) or ``--existing``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results

NAME = "generation"
MODEL = "gpt_bench"
CACHE_GOAL = 5.0
BATCH_GOAL = 3.0
STREAMS = 8
PROMPT = "def generate(self, prompt, max_new_tokens, temperature, top_k):\n  "  # 64 chars


def register_untrained(settings, options: dict) -> int:
    """Register an untrained GPT with ``options`` as ``MODEL`` and promote it; its version."""
    from models import package
    from models.registry import Registry
    from models.weights import save_weights
    from models.zoo import architecture, build_model

    registry = Registry.from_settings(settings)
    run = registry.client.create_run(registry.experiment(MODEL))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        save_weights(build_model("gpt", **options).eval(), folder / package.WEIGHTS_FILE)
        signature = architecture("gpt").signature_for(options)
        package.PackageConfig("gpt", signature, options, {}).write(folder)
        version = registry.register(MODEL, run.info.run_id, folder).version
    registry.promote(MODEL, version, reason="bench.generation: throughput of an untrained GPT")
    return version


def deploy(settings, kv_cache: bool) -> None:
    """Deploy the model API with the Generator's ``kv_cache`` set; wait until it applies."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from cluster.cli.deploy import deploy_models_api, rendered_config

    config = rendered_config(settings)
    generator = next(
        d for d in config["applications"][0]["deployments"] if d["name"] == "Generator"
    )
    generator["user_config"]["kv_cache"] = kv_cache
    deploy_models_api(settings, config)
    client, deadline = ServeSubmissionClient(settings.dashboard_url), time.monotonic() + 240
    while time.monotonic() < deadline:
        app = (client.get_serve_details().get("applications") or {}).get("models", {})
        gen = app.get("deployments", {}).get("Generator", {})
        applied = gen.get("deployment_config", {}).get("user_config", {}).get("kv_cache")
        if (
            app.get("status") == "RUNNING"
            and gen.get("status") == "HEALTHY"
            and applied is kv_cache
        ):
            return
        time.sleep(1.0)
    raise TimeoutError(f"the Generator did not run with kv_cache={kv_cache} within 240 s")


async def one_stream(client: httpx.AsyncClient, url: str, key: str, tokens: int, seed: int):
    """Stream one generation; (tokens received, seconds to its ``done``)."""
    body = {"prompt": PROMPT, "max_new_tokens": tokens, "temperature": 1.0, "seed": seed}
    pieces, done, t0 = 0, False, time.perf_counter()
    async with client.stream("POST", url, json=body, headers={"X-API-Key": key}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"generate answered {r.status_code}: {(await r.aread())[:300]}")
        async for line in r.aiter_lines():
            pieces += line.startswith("data: ") and not done
            done = done or line == "event: done"
    return pieces, time.perf_counter() - t0


def run_streams(url: str, key: str, tokens: int, streams: int) -> dict:
    """``streams`` concurrent generations of ``tokens``: aggregate tokens/s over the wall time."""

    async def main():
        timeout = httpx.Timeout(30.0, read=600.0)
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=64)) as c:
            t0 = time.perf_counter()
            got = await asyncio.gather(
                *(one_stream(c, url, key, tokens, s) for s in range(streams))
            )
            return got, time.perf_counter() - t0

    got, wall = asyncio.run(main())
    received = sum(n for n, _ in got)
    if received != streams * tokens:
        raise RuntimeError(f"{received} tokens received of {streams * tokens}")
    return {"tokens_per_s": round(received / wall, 1), "seconds": round(wall, 2)}


def measured(url: str, key: str, tokens: int, streams: int, repeats: int) -> dict:
    runs = [run_streams(url, key, tokens, streams) for _ in range(repeats)]
    best = statistics.median(r["tokens_per_s"] for r in runs)
    log(f"{streams} stream(s) x {tokens} tokens: {best:.0f} tokens/s ({runs})")
    return {"tokens_per_s": best, "streams": streams, "tokens": tokens, "runs": runs}


def report(uncached: dict, one: dict, many: dict, model: dict) -> dict:
    ratio = one["tokens_per_s"] / uncached["tokens_per_s"]
    batching = many["tokens_per_s"] / one["tokens_per_s"]
    return {
        "name": NAME,
        "ratio": round(ratio, 2),
        "goal": f"ratio >= {CACHE_GOAL:g} (KV cache) and batching_ratio >= {BATCH_GOAL:g}",
        "goal_met": ratio >= CACHE_GOAL and batching >= BATCH_GOAL,
        "batching_ratio": round(batching, 2),
        "baseline": uncached,
        "candidate": one,
        "batched": many,
        "model": model,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--embd", type=int, default=384, help="width (64 per head)")
    parser.add_argument("--tokens", type=int, default=256, help="per stream (server max 256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cached figure")
    parser.add_argument("--existing", action="store_true", help="use the running cluster")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from cluster.cli.deploy import wait_for_version
    from serve_apps.keys import KeyStore, keys_uri

    args = parse_args(argv)
    options = {
        "preset": "125m",
        "n_layer": args.layers,
        "n_embd": args.embd,
        "n_head": args.embd // 64,
        "block_size": 512,
        "vocab_size": 128,
    }
    with cluster(args.existing) as settings:
        version = register_untrained(settings, options)
        keys = KeyStore(keys_uri(settings.storage_root))
        key, record = keys.create("bench-generation")
        try:
            deploy(settings, kv_cache=True)
            wait_for_version(settings, key, MODEL, version)
            url = f"{settings.serve_url}/v1/models/{MODEL}/generate"
            run_streams(url, key, 16, 1)  # loads the version on the replica
            one = measured(url, key, args.tokens, 1, args.repeats)
            many = measured(url, key, args.tokens, STREAMS, args.repeats)
            deploy(settings, kv_cache=False)
            uncached = measured(url, key, args.tokens, 1, 1)
        finally:
            keys.revoke(record.id)
    r = emit(report(uncached, one, many, {"name": MODEL, "version": version, **options}))
    log(f"wrote {write_results(NAME, [r])}")


if __name__ == "__main__":
    main()
