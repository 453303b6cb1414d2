"""Releases: how traffic moves from a model's ``champion`` to its ``candidate``.

``config`` says what a release is (canary, A/B, shadow; thresholds); ``state`` what the
controller keeps of one (``ReleaseState``, persisted); ``stats`` what it is judged on;
``decision`` the pure function that says what a running release does next; ``controller``
the actor that applies decisions on live traffic; ``client`` the gateway's side of it
(routes, signatures, outcomes in batches). ``deployed`` builds the actor's registry on the
cluster, in the actor's own process only. The gateway, ``jobs.release`` and
``aimass release`` import from here.
"""

from __future__ import annotations

from actors.release.config import ReleaseConfig, Thresholds
from actors.release.controller import (
    CONTROLLER_NAME,
    ReleaseController,
    controller_actor,
    find_controller,
)
from actors.release.exceptions import ReleaseError
from actors.release.state import Release, ReleaseState

__all__ = [
    "CONTROLLER_NAME",
    "Release",
    "ReleaseConfig",
    "ReleaseController",
    "ReleaseError",
    "ReleaseState",
    "Thresholds",
    "controller_actor",
    "find_controller",
]
