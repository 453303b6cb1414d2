"""The global rate limiter: one token bucket per API key, shared by every gateway replica.

``RateLimiter`` is the actor (a plain class; the gateway makes it a named, detached actor
in the Serve namespace). Calling it on every request would add a round trip to each one,
so replicas do not: a ``LeasedQuota`` in each replica *leases* small batches of tokens
from the actor and spends them locally, fetching the next batch in the background when
its stock runs low, and answering 429 locally while the actor says the bucket is empty.

Over-admission bound. Every admitted request spends a token that came out of the one
global bucket, so over any window of T seconds the whole service admits at most
``burst + rate * T + R * batch`` requests of a key, where R is the number of gateway
replicas and ``batch = max(1, min(burst, ceil(rate * lease_s)))`` the most a replica holds
(tokens leased before the window and spent inside it). With the default ``lease_s`` of
0.1 s that is at most a tenth of a second of quota per replica above an exact token
bucket. If the actor restarts, its buckets restart full: one extra burst at most.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

LIMITER_NAME = "aimass_rate_limiter"


@dataclass(frozen=True, slots=True)
class Quota:
    """A key's allowance: ``rate`` requests per second on average, ``burst`` at once."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate={self.rate!r}: give a positive number of requests/s.")
        if self.burst < 1:
            raise ValueError(f"burst={self.burst!r}: give at least 1 request.")

    def batch(self, lease_s: float) -> int:
        """How many tokens a replica leases at a time: ``lease_s`` seconds of quota."""
        return max(1, min(self.burst, math.ceil(self.rate * lease_s)))


@dataclass(frozen=True, slots=True)
class Lease:
    """The actor's answer: ``granted`` tokens, and when the next one will be there."""

    granted: int
    wait_s: float  # 0 while the bucket still holds a token after this grant


@dataclass(slots=True)
class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second (times in seconds)."""

    quota: Quota
    tokens: float
    updated: float

    @classmethod
    def full(cls, quota: Quota, now: float) -> TokenBucket:
        return cls(quota, float(quota.burst), now)

    def take(self, want: int, now: float) -> Lease:
        """Take up to ``want`` whole tokens."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.quota.burst, self.tokens + elapsed * self.quota.rate)
        self.updated = now
        granted = min(want, math.floor(self.tokens))
        self.tokens -= granted
        wait = 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.quota.rate
        return Lease(granted, wait)


class RateLimiter:
    """The actor: a token bucket per key id, created full on a key's first lease."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def lease(self, key_id: str, rate: float, burst: int, want: int) -> Lease:
        """Take up to ``want`` tokens from ``key_id``'s bucket (its quota may have changed)."""
        quota, now = Quota(rate, burst), self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket.full(quota, now)
        elif bucket.quota != quota:
            bucket.take(0, now)  # settle the refill at the old rate first
            bucket.quota, bucket.tokens = quota, min(bucket.tokens, quota.burst)
        return bucket.take(max(0, want), now)


@dataclass(frozen=True, slots=True)
class Decision:
    """Admit, or refuse for ``retry_after_s`` seconds."""

    admitted: bool
    retry_after_s: float = 0.0

    @property
    def retry_after(self) -> str:
        """The ``Retry-After`` header: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


LeaseFn = Callable[[str, Quota, int], Awaitable[Lease]]


@dataclass(slots=True)
class _Stock:
    tokens: int = 0
    denied_until: float = float("-inf")
    refill: asyncio.Task | None = None


@dataclass
class LeasedQuota:
    """A replica's side: spends leased tokens locally, refills them asynchronously.

    Args:
        lease: Asks the global limiter for tokens: ``await lease(key_id, quota, want)``.
            Its errors (limiter unreachable, timeout) propagate from ``acquire``.
        lease_s: Seconds of quota per lease; bounds what one replica may hold.
        clock: Monotonic seconds (injectable for tests).
    """

    lease: LeaseFn
    lease_s: float = 0.1
    clock: Callable[[], float] = time.monotonic
    _stock: dict[str, _Stock] = field(default_factory=dict, repr=False)

    async def acquire(self, key_id: str, quota: Quota) -> Decision:
        """Spend one token of ``key_id``: locally when in stock, else from a lease."""
        stock = self._stock.setdefault(key_id, _Stock())
        while True:
            if stock.tokens > 0:
                stock.tokens -= 1
                if stock.tokens < (quota.batch(self.lease_s) + 1) // 2:
                    self._start_refill(key_id, quota, stock)  # prefetch: off the request path
                return Decision(True)
            wait = stock.denied_until - self.clock()
            if wait > 0:
                return Decision(False, wait)
            # Empty, not known to be denied: wait for a lease (one in flight per key). Each
            # lease either grants a token or sets denied_until, so this loop ends.
            await asyncio.shield(self._start_refill(key_id, quota, stock))

    def _start_refill(self, key_id: str, quota: Quota, stock: _Stock) -> asyncio.Task:
        if stock.refill is None or stock.refill.done():
            stock.refill = asyncio.ensure_future(self._refill(key_id, quota, stock))
            stock.refill.add_done_callback(_consume_exception)
        return stock.refill

    async def _refill(self, key_id: str, quota: Quota, stock: _Stock) -> None:
        want = quota.batch(self.lease_s) - stock.tokens
        if want <= 0:
            return
        lease = await self.lease(key_id, quota, want)
        stock.tokens += lease.granted
        if lease.granted < want and lease.wait_s > 0:
            stock.denied_until = self.clock() + lease.wait_s


def _consume_exception(task: asyncio.Task) -> None:
    # A failed background prefetch is retried by the next request; its error is reported
    # to the request that awaits a refill, not logged as "never retrieved".
    if not task.cancelled():
        task.exception()
