"""Prometheus metrics of the model API, per model, version and key (Ray Serve metrics: they
reach Prometheus through each node's metrics agent and show on the Ray dashboard, with the
deployment, replica and application tags Serve adds).

    aimass_requests_total{model, version, key, status, datacenter}   answers by HTTP status
    aimass_request_latency_ms{model, version, datacenter}  time to the answer's first byte
    aimass_rejections_total{reason, key}                   4xx/5xx by error code
    aimass_datacenter_answers_total{origin, served}        answers by where they entered and
                                                           where they were served (spillover)
    aimass_batch_size{model, version}                      requests per ONNX Runtime call
    aimass_response_cache_total{model, result}             cached models' lookups: hit, miss

The release controller exports the canary share (``aimass_release_candidate_share``).
Key tags carry the key's id, never the secret.
"""

from __future__ import annotations

import functools

from fastapi import Request

DATACENTER_ANSWERS = "aimass_datacenter_answers"
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class GatewayMetrics:
    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter(
            "aimass_requests",
            description="Model API answers by model, version, API key id, HTTP status and the "
            "datacenter that answered (empty when none did).",
            tag_keys=("model", "version", "key", "status", "datacenter"),
        )
        self.latency = Histogram(
            "aimass_request_latency_ms",
            description="Gateway time to the first byte of the answer, in milliseconds.",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("model", "version", "datacenter"),
        )
        self.rejections = Counter(
            "aimass_rejections",
            description="Requests answered with an error, by error code and API key id.",
            tag_keys=("reason", "key"),
        )
        self.placement = Counter(
            DATACENTER_ANSWERS,
            description="Model answers by the datacenter a request came from and the one "
            "that served it (they differ when it spilled over).",
            tag_keys=("origin", "served"),
        )

        self.cache = Counter(
            "aimass_response_cache",
            description="Lookups in the response cache of the models that have one: hit or miss.",
            tag_keys=("model", "result"),
        )

    def observe(self, request: Request, status: int, seconds: float) -> None:
        state = request.state
        model = getattr(state, "model", "")
        cached = getattr(state, "cache", None)
        if cached:
            self.cache.inc(tags={"model": model, "result": cached})
        version = str(getattr(state, "version", ""))
        key = getattr(state, "key", "")
        dc = getattr(state, "region", None) or ""
        self.requests.inc(
            tags={
                "model": model,
                "version": version,
                "key": key,
                "status": str(status),
                "datacenter": dc,
            }
        )
        if status < 400:
            tags = {"model": model, "version": version, "datacenter": dc}
            self.latency.observe(seconds * 1e3, tags=tags)
            origin = getattr(state, "origin", None)
            if origin and dc:
                self.placement.inc(tags={"origin": origin, "served": dc})
        else:
            self.rejections.inc(tags={"reason": getattr(state, "error", str(status)), "key": key})


@functools.cache
def gateway_metrics() -> GatewayMetrics:
    """One set per replica process, made on first use (never in the deploying process)."""
    return GatewayMetrics()


@functools.cache
def batch_sizes():
    from ray.serve.metrics import Histogram

    return Histogram(
        "aimass_batch_size",
        description="Requests per ONNX Runtime call, by model and version.",
        boundaries=BATCH_BUCKETS,
        tag_keys=("model", "version"),
    )
