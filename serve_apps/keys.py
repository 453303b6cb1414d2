"""API keys for the gateway: stored salted and hashed on the storage URI, never in plain.

A key reads ``amk_<id>_<secret>``. The id finds the record; the secret is checked by
comparing SHA-256(salt + secret) with the stored hash in constant time. Every gateway
replica reads the same file (on the storage URI), re-reading it at most every
``ttl_s`` seconds, so a revocation reaches all of them within that time. On a local disk
the file is readable by its owner only (mode 0600), rewritten so on every change.

A record also carries the key's scopes (``predict`` for model routes, ``admin``) and an
optional quota (``rate`` requests/s, ``burst``), enforced by the global rate limiter.
Records written before a field existed read with its default.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

from actors.rate_limiter import Quota
from cluster import storage

KEY_PREFIX = "amk"
SCOPES = frozenset({"predict", "admin"})
_KEY_FORMAT = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{20,100}})$")
_MISS_REREAD_S = 0.25
# Hashed when the id is unknown, so a miss costs the same time as a wrong secret.
_DUMMY_SALT = secrets.token_hex(16)


class AuthError(Exception):
    """A request's credentials were refused. ``status`` is 401 or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):
        return (type(self), (self.status, str(self)))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    salt: str
    hash: str
    created: str
    scopes: tuple[str, ...] = ("predict",)
    revoked: str | None = None
    rate: float | None = None  # requests per second; None: no per-key quota
    burst: int | None = None
    datacenters: tuple[str, ...] | None = None  # residency: served only there; None: anywhere
    home: str | None = None  # user-based allocation: served there first, wherever it enters
    tenant: str | None = None  # its tenant, whose residency (gateway config) applies too

    @property
    def quota(self) -> Quota | None:
        return None if self.rate is None else Quota(self.rate, self.burst or _burst(self.rate))

    @classmethod
    def from_json(cls, data: dict) -> KeyRecord:
        known = {f.name for f in fields(cls)}  # fields of a newer version are ignored
        values = {k: v for k, v in data.items() if k in known}
        for name in ("scopes", "datacenters"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


def _check_placement(
    datacenters: tuple[str, ...] | None, home: str | None, tenant: str | None
) -> None:
    """Names that can be Ray labels, and a home inside the residency."""
    from cluster.topology import Datacenter

    for name in (*(datacenters or ()), *([home] if home else [])):
        Datacenter(region=name, zone=f"{name}-a")  # ValueError naming a bad one
    if home and datacenters and home not in datacenters:
        raise ValueError(
            f"home {home!r} is outside the key's datacenters ({', '.join(datacenters)}): its "
            "requests could never be served at home."
        )
    if tenant is not None and not tenant.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"tenant {tenant!r}: use letters, digits, '-' or '_'.")


def _burst(rate: float) -> int:
    """The default burst: one second of quota."""
    return max(1, math.ceil(rate))


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256((salt + secret).encode()).hexdigest()


def keys_uri(storage_root: str) -> str:
    return storage.join(storage_root, "gateway", "api_keys.json")


@dataclass
class KeyStore:
    """Create, list, revoke and check API keys kept in one JSON file.

    Args:
        uri: Where the keys file lives (see ``keys_uri``).
        ttl_s: How long a replica trusts its cached copy of the file.
    """

    uri: str
    ttl_s: float = 2.0
    _cache: dict[str, KeyRecord] = field(default_factory=dict, repr=False)
    _loaded_at: float = field(default=float("-inf"), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _read(self) -> dict[str, KeyRecord]:
        if not storage.exists(self.uri):
            return {}
        data = json.loads(storage.read_bytes(self.uri))
        return {k["id"]: KeyRecord.from_json(k) for k in data["keys"]}

    def _write(self, records: dict[str, KeyRecord]) -> None:
        body = {"keys": [asdict(r) for r in records.values()]}
        # 0600, like the cluster token: hashes and salts are not for other local users to
        # grind offline, and the file names every key with its scopes and quota.
        storage.write_bytes(self.uri, json.dumps(body, indent=2).encode(), private=True)
        self._loaded_at = float("-inf")

    def records(self, max_age_s: float | None = None) -> dict[str, KeyRecord]:
        """The key records, re-read when the cached copy is older than ``max_age_s``
        (default ``ttl_s``)."""
        max_age_s = self.ttl_s if max_age_s is None else max_age_s
        with self._lock:
            if time.monotonic() - self._loaded_at > max_age_s:
                self._cache, self._loaded_at = self._read(), time.monotonic()
            return self._cache

    def create(
        self,
        name: str,
        scopes: tuple[str, ...] = ("predict",),
        rate: float | None = None,
        burst: int | None = None,
        datacenters: tuple[str, ...] | None = None,
        home: str | None = None,
        tenant: str | None = None,
    ) -> tuple[str, KeyRecord]:
        """Make a key; return it in plain (shown once, never stored) and its record.

        Args:
            name: A label for people (``aimass keys list``).
            scopes: What it may do: ``predict`` (model routes), ``admin``.
            rate: Its quota in requests per second, over all gateway replicas; None: none.
            burst: Requests it may send at once (default: one second of ``rate``).
            datacenters: Residency: the only datacenters its requests are served in.
            home: The datacenter its requests are served in first (within ``datacenters``).
            tenant: Its tenant, whose residency (the gateway's config) applies as well.
        """
        _check_placement(datacenters, home, tenant)
        unknown = set(scopes) - SCOPES
        if unknown:
            raise ValueError(f"Unknown scopes {sorted(unknown)}; choose from {sorted(SCOPES)}.")
        if burst is not None and rate is None:
            raise ValueError(f"burst={burst} needs a rate: add --rate (requests per second).")
        if rate is not None:
            burst = _burst(rate) if burst is None else burst
            Quota(rate, burst)  # checks both values
        key_id, secret, salt = (
            secrets.token_hex(6),
            secrets.token_urlsafe(32),
            secrets.token_hex(16),
        )
        record = KeyRecord(
            id=key_id,
            name=name,
            salt=salt,
            hash=_hash(salt, secret),
            scopes=tuple(scopes),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            rate=rate,
            burst=burst,
            datacenters=tuple(datacenters) if datacenters else None,
            home=home,
            tenant=tenant,
        )
        records = self._read()
        records[key_id] = record
        self._write(records)
        return f"{KEY_PREFIX}_{key_id}_{secret}", record

    def revoke(self, key_id: str) -> KeyRecord:
        records = self._read()
        if key_id not in records:
            raise KeyError(f"No API key with id {key_id!r}; `aimass keys list` shows them.")
        revoked = KeyRecord(
            **{
                **asdict(records[key_id]),
                "revoked": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
        records[key_id] = revoked
        self._write(records)
        return revoked

    def authenticate(self, presented: str | None, scope: str = "predict") -> KeyRecord:
        """The record of a valid, unrevoked key with ``scope``; AuthError otherwise."""
        if not presented:
            raise AuthError(
                401, "Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'."
            )
        match = _KEY_FORMAT.fullmatch(presented)
        if not match:
            raise AuthError(401, "Malformed API key.")
        key_id, secret = match.groups()
        record = self.records().get(key_id)
        if record is None:  # a key made since the last read: look again, at most 4x a second
            record = self.records(max_age_s=_MISS_REREAD_S).get(key_id)
        expected = record.hash if record else _hash(_DUMMY_SALT, "")
        actual = _hash(record.salt if record else _DUMMY_SALT, secret)
        if not hmac.compare_digest(expected, actual) or record is None:
            raise AuthError(401, "Invalid API key.")
        if record.revoked:
            raise AuthError(403, "This API key has been revoked.")
        if scope not in record.scopes:
            raise AuthError(403, f"This API key lacks the {scope!r} scope.")
        return record


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from ``Authorization: Bearer …`` or ``X-API-Key`` (the latter wins)."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else authorization.strip()
    return None
