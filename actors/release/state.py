"""A release as the controller keeps it: its state, its step, its history, and where it is
persisted (``<storage>/releases.json``), so a restarted controller carries on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import Enum

from actors.release.config import ReleaseConfig
from cluster import storage


class ReleaseState(str, Enum):
    """Where a release stands. Only ``RUNNING`` splits traffic; the others are final.

    The values are what ``releases.json`` and the controller's status carry (the same
    strings as before states were an Enum, so files written then still load).
    """

    RUNNING = "running"
    PROMOTED = "promoted"  # canary: the candidate is the champion now
    ROLLED_BACK = "rolled_back"  # the controller ended it (a threshold broke, out of time)
    PASSED = "passed"  # shadow: compared enough within thresholds; it stays `candidate`
    ABORTED = "aborted"  # an operator ended it, or the champion moved outside the release


@dataclass(slots=True)
class Release:
    """One release of ``model``: ``candidate`` against ``champion`` (version numbers).

    ``started`` and ``step_started`` are Unix times: the limits (``max_release_s``,
    ``min_step_s``) must hold across a restart of the controller, which a monotonic clock
    would not survive. ``history`` holds one entry per move (see ``ReleaseController``).
    """

    id: str
    model: str
    champion: int
    candidate: int
    config: ReleaseConfig
    state: ReleaseState = ReleaseState.RUNNING
    step: int = 0
    started: float = field(default_factory=time.time)
    step_started: float = field(default_factory=time.time)
    history: list[dict] = field(default_factory=list)

    @property
    def share(self) -> float:
        """The candidate's share of traffic (shadow: of copies) now, 0..1."""
        if self.state is ReleaseState.PROMOTED:
            return 1.0
        if self.state is not ReleaseState.RUNNING:
            return 0.0
        cfg = self.config
        return (cfg.steps[self.step] if cfg.mode == "canary" else cfg.weight) / 100

    def to_json(self) -> dict:
        """Plain JSON data: the layout of ``releases.json`` and of the controller's status."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return data | {"config": self.config.model_dump(), "state": self.state.value}

    @classmethod
    def from_json(cls, data: dict) -> Release:
        config = ReleaseConfig.model_validate(data["config"])
        return cls(**{**data, "config": config, "state": ReleaseState(data["state"])})


class ReleaseStore:
    """Every model's latest release, as one JSON file at ``uri`` (any storage URI).

    Written whole after every move: a handful of releases, a few moves a minute, and
    ``storage.write_bytes`` never lets a reader see half a file.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def load(self) -> dict[str, Release]:
        """Releases by model; empty when nothing was ever saved."""
        if not storage.exists(self.uri):
            return {}
        data = json.loads(storage.read_bytes(self.uri))
        return {r["model"]: Release.from_json(r) for r in data["releases"]}

    def save(self, releases: Iterable[Release]) -> None:
        body = {"releases": [r.to_json() for r in releases]}
        storage.write_bytes(self.uri, json.dumps(body, indent=1).encode())
