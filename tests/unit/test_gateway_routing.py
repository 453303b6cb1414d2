"""Which version answers a request: the gateway's routing decision as a pure function of
the release controller's Route and the caller (no cluster)."""

from __future__ import annotations

import pytest

from actors.release.routing import Mode, Route, in_candidate_share
from serve_apps._private.routing import Plan, plan

RELEASE = "rel-1"


def _callers(inside: bool, share: float = 0.5) -> list[str]:
    """Callers the sticky hash puts inside (or outside) ``share`` of RELEASE."""
    found = [
        c
        for c in (f"user-{i}" for i in range(200))
        if in_candidate_share(RELEASE, c, share) == inside
    ]
    assert len(found) > 20
    return found[:20]


def _route(mode: Mode, compare: bool = False, share: float = 0.5) -> Route:
    return Route(champion=3, candidate=4, share=share, mode=mode, compare=compare, release=RELEASE)


def test_without_a_release_the_champion_answers_alone():
    route = Route(champion=3)
    assert {plan(route, c) for c in _callers(True) + _callers(False)} == {Plan(answers=3)}


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("compare", [False, True])
def test_callers_outside_the_share_get_the_champion_alone(mode, compare):
    route = _route(mode, compare)
    assert {plan(route, c) for c in _callers(False)} == {Plan(answers=3)}


@pytest.mark.parametrize("mode", [Mode.CANARY, Mode.AB])
def test_inside_a_canary_or_ab_share_the_candidate_answers_and_the_champion_stands_by(mode):
    route = _route(mode, compare=False)
    assert {plan(route, c) for c in _callers(True)} == {Plan(answers=4, fallback=3)}


@pytest.mark.parametrize("mode", [Mode.CANARY, Mode.AB])
def test_with_compare_on_the_champion_is_also_asked(mode):
    route = _route(mode, compare=True)
    assert {plan(route, c) for c in _callers(True)} == {Plan(answers=4, fallback=3, compare_with=3)}


@pytest.mark.parametrize("compare", [False, True])
def test_in_shadow_mode_the_champion_answers_and_the_candidate_gets_a_copy(compare):
    route = _route(Mode.SHADOW, compare)
    assert {plan(route, c) for c in _callers(True)} == {Plan(answers=3, shadow=4)}


def test_a_caller_stays_on_its_side_as_the_share_grows_and_all_move_at_100_percent():
    inside = _callers(True, share=0.2)
    for share in (0.2, 0.5, 1.0):
        route = _route(Mode.CANARY, share=share)
        assert all(plan(route, c).answers == 4 for c in inside)
    assert all(plan(_route(Mode.CANARY, share=1.0), c).answers == 4 for c in _callers(False))
    assert all(plan(_route(Mode.CANARY, share=0.0), c).answers == 3 for c in inside)


def test_a_plan_is_a_frozen_value():
    with pytest.raises(AttributeError):
        Plan(answers=3).answers = 4  # type: ignore[misc]
