"""The token bucket, the limiter actor's logic and the replicas' leases, without Ray."""

import asyncio

import pytest

from actors.rate_limiter import Decision, Lease, LeasedQuota, Quota, RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_bucket_grants_the_burst_then_refills_at_the_rate():
    bucket = TokenBucket.full(Quota(rate=5, burst=5), now=0.0)
    assert bucket.take(3, 0.0) == Lease(3, 0.0)
    lease = bucket.take(3, 0.0)
    assert lease.granted == 2 and lease.wait_s == pytest.approx(0.2)
    assert bucket.take(1, 0.1).granted == 0  # half a token
    assert bucket.take(10, 1.0).granted == 5 - 0  # refilled, capped at the burst


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (-1, 5), (float("inf"), 5), (5, 0)])
def test_bad_quotas_are_refused_naming_the_field(rate, burst):
    with pytest.raises(ValueError, match="rate=|burst="):
        Quota(rate, burst)


@pytest.mark.parametrize(
    ("quota", "lease_s", "batch"),
    [(Quota(5, 5), 0.1, 1), (Quota(50, 100), 0.1, 5), (Quota(1000, 20), 0.1, 20)],
)
def test_a_lease_is_lease_s_of_quota_capped_by_the_burst(quota, lease_s, batch):
    assert quota.batch(lease_s) == batch


def test_limiter_keeps_one_bucket_per_key_and_follows_quota_changes(clock):
    limiter = RateLimiter(clock)
    assert limiter.lease("a", 5, 5, 10).granted == 5
    assert limiter.lease("a", 5, 5, 1).granted == 0
    assert limiter.lease("b", 5, 5, 1).granted == 1  # other keys unaffected
    clock.now += 1
    assert limiter.lease("a", 2, 2, 10).granted == 2  # new burst caps the refill


def test_retry_after_is_whole_seconds_and_at_least_one():
    assert Decision(False, 0.2).retry_after == "1"
    assert Decision(False, 1.01).retry_after == "2"


def run_global(replicas: int, requests: int, quota: Quota, lease_s: float = 0.1):
    """``requests`` spread round-robin over ``replicas``, all at one instant."""
    clock = Clock()
    limiter = RateLimiter(clock)
    calls = []

    async def lease(key_id, q, want):
        calls.append(want)
        await asyncio.sleep(0)  # a real round trip yields to other requests
        return limiter.lease(key_id, q.rate, q.burst, want)

    async def main():
        sides = [LeasedQuota(lease, lease_s, clock) for _ in range(replicas)]
        return await asyncio.gather(
            *(sides[i % replicas].acquire("k", quota) for i in range(requests))
        )

    return asyncio.run(main()), calls


@pytest.mark.parametrize("replicas", [1, 2, 4])
def test_a_flood_over_all_replicas_admits_at_most_the_burst_plus_the_leases(replicas):
    quota = Quota(rate=50, burst=20)
    decisions, calls = run_global(replicas, 300, quota)
    admitted = sum(d.admitted for d in decisions)
    # Nothing refills at a frozen instant: the bucket's burst, nothing more.
    assert admitted == quota.burst
    refused = [d for d in decisions if not d.admitted]
    assert all(d.retry_after == "1" for d in refused)
    assert len(calls) < 300 / 5, "replicas must not ask the actor once per request"


def test_tokens_are_leased_ahead_so_most_requests_do_not_wait(clock):
    limiter = RateLimiter(clock)
    waited = []

    async def lease(key_id, q, want):
        waited.append(want)
        return limiter.lease(key_id, q.rate, q.burst, want)

    async def main():
        side = LeasedQuota(lease, 0.1, clock)
        for _ in range(100):  # 100 requests at 10 ms intervals: 100/s of a 200/s quota
            assert (await side.acquire("k", Quota(200, 200))).admitted
            clock.now += 0.01

    asyncio.run(main())
    assert len(waited) <= 100 / 20 + 2  # batches of 20 (0.1 s at 200/s), fetched ahead


def test_over_quota_is_answered_locally_until_the_next_token(clock):
    limiter = RateLimiter(clock)
    calls = []

    async def lease(key_id, q, want):
        calls.append(want)
        return limiter.lease(key_id, q.rate, q.burst, want)

    async def main():
        side, quota = LeasedQuota(lease, 0.1, clock), Quota(rate=5, burst=1)
        assert (await side.acquire("k", quota)).admitted
        await asyncio.sleep(0)  # let the prefetch run: the bucket is empty now
        before = len(calls)
        refused = [await side.acquire("k", quota) for _ in range(50)]
        assert not any(d.admitted for d in refused) and len(calls) == before
        assert refused[0].retry_after_s == pytest.approx(0.2)
        clock.now += 0.2
        assert (await side.acquire("k", quota)).admitted

    asyncio.run(main())


def test_an_unreachable_limiter_raises_to_the_request_and_is_retried(clock):
    limiter, failing = RateLimiter(clock), [True]

    async def lease(key_id, q, want):
        if failing[0]:
            raise TimeoutError("limiter did not answer")
        return limiter.lease(key_id, q.rate, q.burst, want)

    async def main():
        side = LeasedQuota(lease, 0.1, clock)
        with pytest.raises(TimeoutError):
            await side.acquire("k", Quota(5, 5))
        failing[0] = False
        assert (await side.acquire("k", Quota(5, 5))).admitted

    asyncio.run(main())
