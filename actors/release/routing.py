"""What every gateway replica follows: per model, which version answers whom.

Plain data, free of the registry and of torch: the gateway imports it, and the release
controller sends it (``ReleaseController.routes``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum


class Mode(str, Enum):
    """How a release splits traffic (see ``actors.release.config``)."""

    CANARY = "canary"
    AB = "ab"
    SHADOW = "shadow"


@dataclass(frozen=True, slots=True)
class Route:
    """One served model's routing entry.

    Attributes:
        champion: The version that answers by default.
        candidate: The running release's candidate, or None when no release runs.
        share: The candidate's share (0..1): of answers (canary, ab) or of copies (shadow).
        mode: How the running release uses the candidate; None without one.
        compare: Whether the champion also answers the candidate's requests, to measure
            agreement.
        release: The running release's id (sticky assignment hashes it); None without one.
    """

    champion: int
    candidate: int | None = None
    share: float = 0.0
    mode: Mode | None = None
    compare: bool = False
    release: str | None = None

    def sends_to_candidate(self, caller: str) -> bool:
        """Whether this caller's requests go to (or are copied to) the candidate."""
        return self.candidate is not None and in_candidate_share(
            self.release or "", caller, self.share
        )


def in_candidate_share(release_id: str, who: str, share: float) -> bool:
    """Sticky assignment: the same caller lands on the same side for one release, and a
    caller inside the share stays inside when the share grows."""
    digest = hashlib.blake2b(f"{release_id}:{who}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64 < share


@dataclass(slots=True)
class Outcome:
    """One answer of one version, as a gateway replica saw it."""

    model: str
    version: int
    ok: bool
    latency_ms: float
    agreed: bool | None = None  # None: not compared with the champion
    request_id: str | None = None
    predictions: list[int] | None = None  # kept for feedback
    cold: bool = False  # it waited for the version to load: no latency sample of the model
