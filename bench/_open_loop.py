"""Open-loop load on loopback: requests sent on schedule, whether or not earlier ones were
answered (arrivals do not wait, as on a public API), with a ledger of every answer.

A lean HTTP/1.1 client (keep-alive connections reused, request bytes built once, uvloop):
on two cores a general-purpose client at 2x the service's capacity took as much CPU as the
proxy, and its own delays were most of the latency it measured. Used by the benchmarks and
by the end-to-end tests (``arrivals``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvloop

from bench._serve_load import read_response

ANSWER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Answer:
    """One request's outcome: status (or the client error's name), latency, the
    ``Retry-After`` and ``X-Served-Region`` it carried, and the origin it named."""

    rid: str
    status: int | str
    latency_ms: float
    retry_after: str | None
    served: str | None = None
    origin: str | None = None


def _header(headers: bytes, name: bytes) -> str | None:
    at = headers.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    return headers[at + len(name) + 3 : headers.index(b"\r\n", at + 2)].strip().decode()


async def arrivals(
    url: str, key: str, body: dict, rate: float, duration_s: float, origin: str | None = None
) -> list[Answer]:
    """Send ``rate`` requests per second for ``duration_s`` (naming ``origin`` in
    ``X-Origin-Datacenter`` when given), then wait for every answer (30 s timeout each).
    One Answer per request: the ledger."""
    target = urlsplit(url)
    payload = json.dumps(body).encode()
    named = f"X-Origin-Datacenter: {origin}\r\n" if origin else ""
    head = (
        f"POST {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{named}"
    ).encode()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def exchange(rid: str) -> tuple[int, bytes]:
        reader, writer = (
            idle.pop() if idle else await asyncio.open_connection(target.hostname, target.port)
        )
        writer.write(head + f"X-Request-ID: {rid}\r\n\r\n".encode() + payload)
        status, headers = await read_response(reader)
        idle.append((reader, writer))
        return status, headers

    async def one() -> Answer:
        rid = uuid.uuid4().hex
        t0 = time.perf_counter()
        try:
            status, headers = await asyncio.wait_for(exchange(rid), ANSWER_TIMEOUT_S)
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as err:
            return Answer(rid, type(err).__name__, (time.perf_counter() - t0) * 1e3, None)
        return Answer(
            rid,
            status,
            (time.perf_counter() - t0) * 1e3,
            _header(headers, b"retry-after"),
            _header(headers, b"x-served-region"),
            origin,
        )

    start, tasks = time.perf_counter(), []
    for n in range(int(rate * duration_s)):
        if (wait := start + n / rate - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(one()))
    answers = list(await asyncio.gather(*tasks))
    for _, writer in idle:
        writer.close()
    return answers


def run_together(*loads: Coroutine) -> list[list[Answer]]:
    """Run ``arrivals(...)`` coroutines at once, on one uvloop; their ledgers, in order."""

    async def together() -> list[list[Answer]]:
        return list(await asyncio.gather(*loads))

    # The generator's own pauses would be counted as the service's latency: in a long pytest
    # session a full collection over millions of old objects stalls the loop for most of a
    # second. Frozen, the old objects are left out of every collection while the load runs.
    gc.collect()
    gc.freeze()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(together())
    finally:
        gc.unfreeze()


def open_loop(url: str, key: str, body: dict, rate: float, duration_s: float) -> list[Answer]:
    """One stream of ``arrivals``, run to its end."""
    return run_together(arrivals(url, key, body, rate, duration_s))[0]
