"""Who may call the model routes, and how often: API keys with their scopes (401/403), and
each key's quota across all gateway replicas (429).

Quotas are leased from the one RateLimiter actor of the Serve namespace (see
``actors.rate_limiter``): a replica spends leased tokens locally, so a request costs no
actor call. If the limiter cannot be reached, keys with a quota fail closed: 503 with
``Retry-After`` (keys without one never call it). The actor is detached and restarted by
Ray; the next lease looks it up (or creates it) again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ray.actor import ActorHandle
from ray.exceptions import RayError

from actors import serve_singleton
from actors.rate_limiter import LIMITER_NAME, Lease, LeasedQuota, Quota, RateLimiter
from serve_apps._private.http import ApiError
from serve_apps.keys import AuthError, KeyRecord, KeyStore, presented_key

logger = logging.getLogger("ray.serve")


def authenticate(
    keys: KeyStore, authorization: str | None, x_api_key: str | None, scope: str = "predict"
) -> KeyRecord:
    """The record of the key the headers present, if it is valid and has ``scope``."""
    try:
        return keys.authenticate(presented_key(authorization, x_api_key), scope=scope)
    except AuthError as err:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
        code = "unauthorized" if err.status == 401 else "forbidden"
        raise ApiError(err.status, code, str(err), headers) from None


def limiter_actor() -> ActorHandle:
    """The one RateLimiter of the Serve namespace, created by whichever replica asks first.
    Restarted with full buckets if it dies: at most one extra burst."""
    return serve_singleton(RateLimiter, LIMITER_NAME)


class QuotaGate:
    """Admits a key's request while its quota lasts, over all gateway replicas.

    Args:
        lease_s: Seconds of a key's quota leased at once (each replica's over-admission bound).
        timeout_s: How long a lease may take before the request gets 503.
        find_limiter: Finds (or creates) the RateLimiter actor; a blocking GCS call.
    """

    def __init__(
        self,
        lease_s: float,
        timeout_s: float,
        find_limiter: Callable[[], ActorHandle] = limiter_actor,
    ) -> None:
        self.timeout_s, self._find_limiter = timeout_s, find_limiter
        self._quotas = LeasedQuota(self._lease, lease_s)
        self._limiter: ActorHandle | None = None

    def reconfigure(self, lease_s: float, timeout_s: float) -> None:
        self._quotas.lease_s, self.timeout_s = lease_s, timeout_s

    async def check(self, record: KeyRecord) -> None:
        """Return if ``record``'s key may send this request; ApiError 429 or 503 if not."""
        if record.quota is None:
            return
        try:
            decision = await self._quotas.acquire(record.id, record.quota)
        except (RayError, TimeoutError) as err:  # fail closed, but never with a 500
            logger.warning("rate limiter unreachable (%s): refusing quota keys", err)
            self._limiter = None  # look it up (or create it) again on the next lease
            raise ApiError(
                503, "rate_limiter_unavailable", "Try again shortly.", {"Retry-After": "1"}
            ) from None
        if not decision.admitted:
            raise ApiError(
                429,
                "rate_limited",
                f"Over this key's quota of {record.quota.rate:g} requests/s "
                f"(burst {record.quota.burst}); retry after {decision.retry_after} s.",
                {"Retry-After": decision.retry_after},
            )

    async def _lease(self, key_id: str, quota: Quota, want: int) -> Lease:
        if self._limiter is None:  # a GCS lookup: off the event loop
            self._limiter = await asyncio.to_thread(self._find_limiter)
        return await asyncio.wait_for(
            self._limiter.lease.remote(key_id, quota.rate, quota.burst, want), self.timeout_s
        )
