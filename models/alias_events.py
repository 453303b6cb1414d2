"""Alias history: every move of an alias kept as its own registered-model tag.

A tag ``aimass.alias_event.<ns>-<random>`` holds compact JSON (when, alias, from, to, why,
who). One tag per event, never a shared list rewritten, so concurrent writers cannot lose
each other's events.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

EVENT_PREFIX = "aimass.alias_event."
# MLflow validates registry tag values up to 100 000 characters, but its SQL schema stores
# them as VARCHAR(5000), which PostgreSQL and MySQL enforce: a capped reason keeps an event
# (the rest of it is < 300 characters) far below that.
_REASON_MAX = 1000


@dataclass(frozen=True, slots=True)
class AliasEvent:
    """One move of an alias, as recorded in the registry."""

    model: str
    alias: str
    from_version: int | None
    """The version the alias pointed at before; None when the alias was new."""
    to_version: int
    reason: str
    who: str
    """``user@host`` of the process that moved it."""
    when: str
    """UTC, ISO 8601."""
    key: str
    """The registered-model tag it is stored under; orders events by the writer's clock."""

    def to_json(self) -> str:
        data = {
            "when": self.when,
            "alias": self.alias,
            "from": self.from_version,
            "to": self.to_version,
            "why": self.reason,
            "who": self.who,
        }
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_tag(cls, model: str, key: str, value: str) -> AliasEvent:
        data = json.loads(value)
        return cls(
            model=model,
            alias=data["alias"],
            from_version=data["from"],
            to_version=data["to"],
            reason=data["why"],
            who=data["who"],
            when=data["when"],
            key=key,
        )

    @property
    def order(self) -> tuple[int, str]:
        ns, _, rand = self.key.removeprefix(EVENT_PREFIX).partition("-")
        return int(ns), rand

    @classmethod
    def new(cls, model: str, alias: str, before: int | None, after: int, reason: str) -> AliasEvent:
        """An event for a move happening now, under a key no other writer can take."""
        ns = time.time_ns()
        return cls(
            model=model,
            alias=alias,
            from_version=before,
            to_version=after,
            reason=" ".join(reason.split())[:_REASON_MAX],  # one line, bounded
            who=_who(),
            when=datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="microseconds"),
            # The random part keeps two writers' keys apart even within one nanosecond.
            key=f"{EVENT_PREFIX}{ns}-{secrets.token_hex(4)}",
        )


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name, e.g. a container's arbitrary uid
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
