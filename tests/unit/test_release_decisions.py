"""Release decisions without a cluster: thresholds, sticky shares, configs, step shares."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from actors.release.config import ReleaseConfig, Thresholds
from actors.release.controller import (
    PROMOTED,
    ROLLED_BACK,
    OnlineStats,
    Release,
    judge,
)
from actors.release.routing import Outcome, Route, in_candidate_share
from jobs.release import parse


def _stats(n: int, *, errors: int = 0, latency_ms: float = 5.0, agreed: int | None = None):
    s = OnlineStats()
    for i in range(n):
        ok = i >= errors
        agree = None if agreed is None else i < agreed
        s.add(Outcome("m", 1, ok, latency_ms, agree))
    return s


def test_a_candidate_within_every_threshold_passes():
    assert judge(Thresholds(), _stats(100), _stats(50, agreed=50)) is None


def test_each_threshold_names_itself_when_broken():
    t = Thresholds(min_samples=20)
    assert "error rate" in judge(t, _stats(100), _stats(40, errors=5))
    assert "p95 latency" in judge(t, _stats(100), _stats(40, latency_ms=50.0))
    assert "agreement" in judge(t, _stats(100), _stats(40, agreed=20))
    champion, candidate = _stats(100), _stats(40)
    champion.labelled, champion.correct = 100, 98
    candidate.labelled, candidate.correct = 40, 30
    assert "accuracy" in judge(t, champion, candidate)


def test_no_check_fires_before_it_has_its_samples():
    t = Thresholds(min_samples=20)
    assert judge(t, _stats(100), _stats(19, errors=19, latency_ms=999.0, agreed=0)) is None


def test_the_share_is_sticky_and_grows_monotonically():
    callers = [f"user-{i}" for i in range(4000)]
    at = {s: {c for c in callers if in_candidate_share("r1", c, s)} for s in (0.05, 0.25, 0.5)}
    assert at[0.05] <= at[0.25] <= at[0.5]  # a caller inside stays inside as it grows
    assert abs(len(at[0.25]) / len(callers) - 0.25) < 0.03
    assert at[0.25] != {c for c in callers if in_candidate_share("r2", c, 0.25)}  # per release
    assert not any(in_candidate_share("r1", c, 0.0) for c in callers)
    assert all(in_candidate_share("r1", c, 1.0) for c in callers)


def test_release_share_follows_state_and_mode():
    canary = Release("r", "m", 1, 2, ReleaseConfig(model="m", steps=[5, 50, 100]).model_dump())
    assert canary.share == 0.05
    canary.step = 1
    assert canary.share == 0.5
    canary.state = ROLLED_BACK
    assert canary.share == 0.0
    canary.state = PROMOTED
    assert canary.share == 1.0
    ab = Release("r", "m", 1, 2, ReleaseConfig(model="m", mode="ab", weight=30).model_dump())
    assert ab.share == 0.3


@pytest.mark.parametrize(
    "fields",
    [
        {"steps": [50, 25, 100]},  # not rising
        {"steps": [5, 25, 50]},  # a canary must end at 100
        {"steps": [0, 100]},
        {"weight": 0},
        {"mode": "blue-green"},
        {"thresholds": {"max_error_rate": 2}},
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
