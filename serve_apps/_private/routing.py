"""Which version answers a request, decided from the release controller's Route: a pure
function, free of Serve and of the network (the gateway carries the decision out)."""

from __future__ import annotations

from dataclasses import dataclass

from actors.release.routing import Mode, Route


@dataclass(frozen=True, slots=True)
class Plan:
    """How one request is answered.

    Attributes:
        answers: The version whose answer the client gets.
        fallback: The version that answers instead when ``answers`` fails (the champion,
            for a candidate's request); None: that failure is the client's answer.
        compare_with: A version asked at the same time, to measure agreement with
            ``answers`` (the champion, when the release compares); when it is also the
            fallback, its answer serves as the fallback's.
        shadow: A version sent a copy after the answer, in the background: its answer is
            compared with the client's and never shown.
    """

    answers: int
    fallback: int | None = None
    compare_with: int | None = None
    shadow: int | None = None


def plan(route: Route, caller: str) -> Plan:
    """The plan for ``caller``'s request to a model routed by ``route``.

    Callers outside the candidate's share, and every caller when no release runs, get the
    champion. Inside it: in shadow mode the champion answers and the candidate gets a copy
    (always compared: the champion's answer is at hand anyway); in canary and A/B modes
    the candidate answers, the champion stands by, and is asked too when ``compare`` is on.
    """
    if not route.sends_to_candidate(caller):
        return Plan(route.champion)
    if route.mode is Mode.SHADOW:
        return Plan(route.champion, shadow=route.candidate)
    return Plan(
        route.candidate,
        fallback=route.champion,
        compare_with=route.champion if route.compare else None,
    )
