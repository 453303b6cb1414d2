"""What a running release does next: a pure function of the release, its step's windows,
the registry's champion and the time.

The controller (``actors.release.controller``) asks ``decide`` on every tick and applies
the answer (registry writes, history, metrics, persistence). Nothing here reads the
registry, Ray or the clock, so each transition is tested as plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from actors.release.state import Release, ReleaseState
from actors.release.stats import OnlineStats, broken_threshold


class Action(str, Enum):
    """What to do with a running release. The values name the move in the release's
    history and in the ``aimass_release_events`` metric (with ``start``)."""

    HOLD = "hold"  # keep the current share: the step has not gathered enough yet
    # HOLD, and tell the operator: traffic flows, but none of it reaches the candidate
    # (the sticky split put every caller on the champion's side).
    STALL = "stalled"
    STEP = "step"  # canary: move to the next, larger share
    PROMOTE = "promote"  # canary: the candidate becomes the champion
    PASS = "passed"  # shadow: enough comparisons within thresholds
    ROLL_BACK = "rollback"  # the candidate broke a threshold, or ran out of time
    ABORT = "abort"  # ended from outside: an operator, or the champion moved


_ENDS_IN = {
    Action.PROMOTE: ReleaseState.PROMOTED,
    Action.PASS: ReleaseState.PASSED,
    Action.ROLL_BACK: ReleaseState.ROLLED_BACK,
    Action.ABORT: ReleaseState.ABORTED,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision on a release.

    Attributes:
        action: What to do.
        reason: Why, as a sentence for the history, the logs and the version's tag.
        step: STEP, and a PROMOTE that first takes the last (100 %) step: the index in
            ``config.steps`` the release moves to. None otherwise.
    """

    action: Action
    reason: str
    step: int | None = None

    @property
    def ends_in(self) -> ReleaseState | None:
        """The state the release ends in, or None while it goes on (HOLD, STEP)."""
        return _ENDS_IN.get(self.action)


def decide(
    release: Release,
    champion_now: int | None,
    champion: OnlineStats,
    candidate: OnlineStats,
    now: float,
) -> Decision:
    """The next move of ``release``.

    Args:
        release: The release (its config, step, and when it and its step started).
        champion_now: The version the release's champion alias (``champion``, or
            ``champion-<region>`` for a release in one region of a rollout) points at now
            (None: no such alias). If it is not the release's champion, someone moved it
            outside the release, and the release cannot go on against a baseline that no
            longer serves.
        champion: The champion's answers during the current step.
        candidate: The candidate's answers during the current step.
        now: Unix time, as ``release.started`` and ``release.step_started``.

    In this order: the champion moved → ABORT; a threshold broken → ROLL_BACK; an A/B split
    → HOLD (it runs until aborted, by hand or by a threshold); out of ``max_release_s`` →
    ROLL_BACK; the step short of ``min_step_s`` or ``min_requests`` → HOLD (STALL when the
    champion had enough traffic for the step's share and the candidate none of it); then a
    shadow PASSes, a canary STEPs up, and its last step PROMOTEs.
    """
    if release.state is not ReleaseState.RUNNING:
        return Decision(Action.HOLD, f"the release has ended ({release.state.value})")
    if champion_now != release.champion:
        where = "was removed" if champion_now is None else f"moved to v{champion_now}"
        return Decision(Action.ABORT, f"the champion alias {where} outside the release")
    cfg = release.config
    broken = broken_threshold(cfg.thresholds, champion, candidate)
    if broken:
        return Decision(Action.ROLL_BACK, broken)
    if cfg.mode == "ab":
        return Decision(Action.HOLD, f"A/B split at {cfg.weight:g} % until it is aborted")
    if now - release.started > cfg.max_release_s:
        return Decision(
            Action.ROLL_BACK, f"not enough traffic to decide within {cfg.max_release_s:.0f} s"
        )
    return _after_the_step(release, champion, candidate, held_s=now - release.step_started)


def _after_the_step(
    release: Release, champion: OnlineStats, candidate: OnlineStats, held_s: float
) -> Decision:
    """HOLD until the step has lasted and gathered enough; then PASS, STEP or PROMOTE."""
    cfg = release.config
    shadow = cfg.mode == "shadow"
    gathered = candidate.compared if shadow else candidate.requests
    if held_s >= cfg.min_step_s and _starved(release, champion, candidate):
        return Decision(
            Action.STALL,
            f"the candidate got none of the step's {champion.requests} requests: callers "
            f"are split by API key or X-User-ID, and every one so far is outside the "
            f"{release.share:.0%} share. Send X-User-ID per end user, or abort; the release "
            f"rolls back after max_release_s ({cfg.max_release_s:.0f} s)",
        )
    if held_s < cfg.min_step_s or gathered < cfg.min_requests:
        what = "comparisons" if shadow else "candidate answers"
        return Decision(
            Action.HOLD,
            f"step held {held_s:.0f} of {cfg.min_step_s:g} s, "
            f"{gathered} of {cfg.min_requests} {what}",
        )
    if shadow:
        return Decision(Action.PASS, f"{gathered} comparisons within thresholds")
    after = release.step + 1
    if after == len(cfg.steps):  # already at the last step (100 %): it held
        return Decision(Action.PROMOTE, f"{cfg.steps[-1]:g} % held within thresholds")
    if cfg.steps[after] < 100:
        return Decision(Action.STEP, f"to {cfg.steps[after]:g} %", step=after)
    # Reaching the last step (100 %) is the promotion itself (see ReleaseConfig): the
    # history shows the step, then the promotion, in the same tick.
    return Decision(Action.PROMOTE, "every step held within thresholds", step=after)


def _starved(release: Release, champion: OnlineStats, candidate: OnlineStats) -> bool:
    """Whether the champion's traffic would have filled the step's ``min_requests`` at
    its share, split request by request, while the candidate got none. The split is per
    caller (``routing.in_candidate_share``): a few callers, or one key without X-User-ID,
    can all fall outside a small share, and the step would wait for ``max_release_s``."""
    return (
        candidate.requests == 0 and champion.requests * release.share >= release.config.min_requests
    )
