"""Query a served model with a labelled split over HTTP: accuracy and latency per request."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np


@dataclass(frozen=True, slots=True)
class QueryResult:
    correct: int
    total: int
    p50_ms: float
    p99_ms: float
    concurrency: int
    versions: tuple[int, ...]  # model versions that answered

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def query_split(
    base_url: str, key: str, model: str, x: np.ndarray, y: np.ndarray, concurrency: int = 8
) -> QueryResult:
    """One request per instance, ``concurrency`` at a time; every one must answer 200."""
    url = f"{base_url}/v1/models/{model}/predict"
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(i: int) -> tuple[int, float, int]:
            t0 = time.perf_counter()
            r = client.post(
                url,
                json={"instances": [x[i].reshape(-1).tolist()]},
                headers={**headers, "X-Request-ID": uuid.uuid4().hex},
            )
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise RuntimeError(f"request {i} answered {r.status_code}: {r.text[:200]}")
            body = r.json()
            return body["predictions"][0], elapsed, body["version"]

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(min(2 * concurrency, len(y)))))  # warm-up, not measured
            answers = list(pool.map(one, range(len(y))))
    predictions = np.array([a[0] for a in answers])
    latencies = np.array([a[1] for a in answers])
    return QueryResult(
        correct=int((predictions == y).sum()),
        total=len(y),
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        concurrency=concurrency,
        versions=tuple(sorted({a[2] for a in answers})),
    )
