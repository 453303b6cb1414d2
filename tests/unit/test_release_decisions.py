"""Release decisions without a cluster: every transition of ``decide``, thresholds, sticky
shares, configs, step shares."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from actors.release.config import ReleaseConfig, Thresholds
from actors.release.decision import Action, Decision, decide
from actors.release.routing import Outcome, Route, in_candidate_share
from actors.release.state import Release, ReleaseState
from actors.release.stats import OnlineStats, broken_threshold
from jobs.release import parse

T0 = 1_000_000.0  # when the release (and its step) started, in Unix seconds


def _stats(n: int, *, errors: int = 0, latency_ms: float = 5.0, agreed: int | None = None):
    s = OnlineStats()
    for i in range(n):
        ok = i >= errors
        agree = None if agreed is None else i < agreed
        s.add(Outcome("m", 1, ok, latency_ms, agree))
    return s


def _release(step: int = 0, state=ReleaseState.RUNNING, **config) -> Release:
    """v2 against v1; each step needs 10 s and 20 answers, the release one hour."""
    defaults = {"steps": [5, 50, 100], "min_step_s": 10, "min_requests": 20}
    cfg = ReleaseConfig(model="m", max_release_s=3600, **(defaults | config))
    return Release("r", "m", 1, 2, cfg, state=state, step=step, started=T0, step_started=T0)


def _decide(
    release: Release, candidate: OnlineStats, *, after_s: float, champion_now=1, champion=None
):
    champion = _stats(100) if champion is None else champion
    return decide(release, champion_now, champion, candidate, T0 + after_s)


ENOUGH = dict(candidate=_stats(40, agreed=40), after_s=11)  # a step's time and answers


@pytest.mark.parametrize(
    ("release", "inputs", "action", "step", "why"),
    [
        pytest.param(
            _release(),
            ENOUGH | {"champion_now": 3},
            Action.ABORT,
            None,
            "moved to v3",
            id="the champion moved outside the release: abort",
        ),
        pytest.param(
            _release(),
            ENOUGH | {"champion_now": None},
            Action.ABORT,
            None,
            "was removed",
            id="the champion alias removed: abort",
        ),
        pytest.param(
            _release(),
            {"candidate": _stats(40, errors=5), "after_s": 1},
            Action.ROLL_BACK,
            None,
            "error rate",
            id="a threshold broken: roll back at once",
        ),
        pytest.param(
            _release(),
            {"candidate": _stats(3), "after_s": 3601},
            Action.ROLL_BACK,
            None,
            "within 3600 s",
            id="out of time: roll back",
        ),
        pytest.param(
            _release(mode="shadow"),
            {"candidate": _stats(3), "after_s": 3601},
            Action.ROLL_BACK,
            None,
            "not enough traffic",
            id="a shadow out of time: roll back",
        ),
        pytest.param(
            _release(),
            ENOUGH | {"after_s": 9},
            Action.HOLD,
            None,
            "9 of 10 s",
            id="not long enough at the step: hold",
        ),
        pytest.param(
            _release(),
            {"candidate": _stats(19, agreed=19), "after_s": 60},
            Action.HOLD,
            None,
            "19 of 20 candidate answers",
            id="not enough answers: hold",
        ),
        pytest.param(
            _release(),
            {"candidate": _stats(0), "after_s": 60, "champion": _stats(400)},
            Action.STALL,
            None,
            "none of the step's 400 requests",
            id="traffic flows but none reaches the candidate: stalled",
        ),
        pytest.param(
            _release(),
            {"candidate": _stats(0), "after_s": 60, "champion": _stats(399)},
            Action.HOLD,
            None,
            "0 of 20 candidate answers",
            id="too little traffic to expect the share's answers: hold",
        ),
        pytest.param(
            _release(),
            {"candidate": _stats(0), "after_s": 9, "champion": _stats(400)},
            Action.HOLD,
            None,
            "9 of 10 s",
            id="no candidate answer before the step's time: hold",
        ),
        pytest.param(
            _release(mode="shadow"),
            {"candidate": _stats(40), "after_s": 60},
            Action.HOLD,
            None,
            "0 of 20 comparisons",
            id="a shadow counts comparisons, not answers",
        ),
        pytest.param(
            _release(mode="ab", weight=30),
            ENOUGH | {"after_s": 7200},
            Action.HOLD,
            None,
            "A/B split at 30 %",
            id="an A/B split holds, past max_release_s too",
        ),
        pytest.param(
            _release(mode="ab"),
            {"candidate": _stats(40, agreed=10), "after_s": 60},
            Action.ROLL_BACK,
            None,
            "agreement",
            id="an A/B split still rolls back",
        ),
        pytest.param(
            _release(mode="shadow"),
            ENOUGH,
            Action.PASS,
            None,
            "40 comparisons",
            id="a shadow passes after enough comparisons",
        ),
        pytest.param(
            _release(step=0),
            ENOUGH,
            Action.STEP,
            1,
            "to 50 %",
            id="a canary steps up",
        ),
        pytest.param(
            _release(step=1),
            ENOUGH,
            Action.PROMOTE,
            2,
            "every step held",
            id="reaching the last step (100 %) promotes",
        ),
        pytest.param(
            _release(steps=[100]),
            ENOUGH,
            Action.PROMOTE,
            None,
            "100 % held",
            id="a canary at its only step (100 %) promotes once it held",
        ),
        pytest.param(
            _release(state=ReleaseState.ROLLED_BACK),
            ENOUGH,
            Action.HOLD,
            None,
            "ended",
            id="an ended release stays as it is",
        ),
    ],
)
def test_decide(release, inputs, action, step, why):
    decision = _decide(release, **inputs)
    assert (decision.action, decision.step) == (action, step)
    assert why in decision.reason


def test_a_decision_says_which_state_it_ends_in_and_cannot_change():
    ends = {a: Decision(a, "why").ends_in for a in Action}
    assert ends == {
        Action.HOLD: None,
        Action.STALL: None,
        Action.STEP: None,
        Action.PROMOTE: ReleaseState.PROMOTED,
        Action.PASS: ReleaseState.PASSED,
        Action.ROLL_BACK: ReleaseState.ROLLED_BACK,
        Action.ABORT: ReleaseState.ABORTED,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        Decision(Action.HOLD, "why").action = Action.PROMOTE


def test_a_candidate_within_every_threshold_passes():
    assert broken_threshold(Thresholds(), _stats(100), _stats(50, agreed=50)) is None


def test_each_threshold_names_itself_when_broken():
    t = Thresholds(min_samples=20)
    assert "error rate" in broken_threshold(t, _stats(100), _stats(40, errors=5))
    assert "p95 latency" in broken_threshold(t, _stats(100), _stats(40, latency_ms=50.0))
    assert "agreement" in broken_threshold(t, _stats(100), _stats(40, agreed=20))
    champion, candidate = _stats(100), _stats(40)
    champion.labelled, champion.correct = 100, 98
    candidate.labelled, candidate.correct = 40, 30
    assert "accuracy" in broken_threshold(t, champion, candidate)


def test_an_answer_that_waited_for_its_version_to_load_is_no_latency_sample():
    candidate = _stats(40)
    for _ in range(5):  # a new version's first answers, behind its load on the replica
        candidate.add(Outcome("m", 2, True, 900.0, True, cold=True))
    assert candidate.requests == 45 and candidate.summary()["p95_ms"] == 5.0
    assert broken_threshold(Thresholds(min_samples=20), _stats(100), candidate) is None
    candidate.add(Outcome("m", 2, False, 0.0, cold=True))
    assert candidate.errors == 1  # a cold failure still counts as a failure


def test_no_check_fires_before_it_has_its_samples():
    t = Thresholds(min_samples=20)
    assert (
        broken_threshold(t, _stats(100), _stats(19, errors=19, latency_ms=999.0, agreed=0)) is None
    )


def test_the_share_is_sticky_and_grows_monotonically():
    callers = [f"user-{i}" for i in range(4000)]
    at = {s: {c for c in callers if in_candidate_share("r1", c, s)} for s in (0.05, 0.25, 0.5)}
    assert at[0.05] <= at[0.25] <= at[0.5]  # a caller inside stays inside as it grows
    assert abs(len(at[0.25]) / len(callers) - 0.25) < 0.03
    assert at[0.25] != {c for c in callers if in_candidate_share("r2", c, 0.25)}  # per release
    assert not any(in_candidate_share("r1", c, 0.0) for c in callers)
    assert all(in_candidate_share("r1", c, 1.0) for c in callers)


def test_release_share_follows_state_and_mode():
    canary = _release()
    assert canary.share == 0.05
    canary.step = 1
    assert canary.share == 0.5
    canary.state = ReleaseState.ROLLED_BACK
    assert canary.share == 0.0
    canary.state = ReleaseState.PROMOTED
    assert canary.share == 1.0
    assert _release(mode="ab", weight=30).share == 0.3


@pytest.mark.parametrize(
    "fields",
    [
        {"steps": [50, 25, 100]},  # not rising
        {"steps": [5, 25, 50]},  # a canary must end at 100
        {"steps": [0, 100]},
        {"weight": 0},
        {"mode": "blue-green"},
        {"thresholds": {"max_error_rate": 2}},
        {"min_requests": 10, "thresholds": {"min_samples": 20}},  # a step before its gates
    ],
)
def test_bad_release_configs_are_refused(fields):
    with pytest.raises(ValidationError):
        ReleaseConfig(model="digits", **fields)


def test_the_cli_builds_the_config_and_refuses_bad_flags(capsys):
    _, cfg = parse(["--model", "digits", "--steps", "10,100", "--min-agreement", "0.8"])
    assert cfg.steps == [10, 100] and cfg.thresholds.min_agreement == 0.8
    with pytest.raises(SystemExit) as exit_:
        parse(["--model", "digits", "--steps", "10,50"])
    assert exit_.value.code == 2 and "ends at 100" in capsys.readouterr().err


def test_a_route_sends_a_caller_to_the_candidate_only_inside_the_share():
    callers = [f"key{i}" for i in range(400)]
    assert not any(Route(champion=1).sends_to_candidate(c) for c in callers)
    half = Route(champion=1, candidate=2, share=0.5, release="r1")
    inside = [c for c in callers if half.sends_to_candidate(c)]
    assert 150 < len(inside) < 250
    assert inside == [c for c in callers if in_candidate_share("r1", c, 0.5)]
