"""The release controller as a plain class, without Ray or MLflow: an in-memory registry, a
clock the test moves, the state in a temp folder. Decisions are applied: aliases, tags,
history, persistence."""

from __future__ import annotations

import asyncio
import copy
import json
import pkgutil

import pytest

from actors.release import ReleaseController, ReleaseError, ReleaseState
from actors.release.config import ReleaseConfig
from actors.release.controller import (
    ABORT_COMMAND,
    DEPLOYED_PARTS,
    STATUS_COMMAND,
    ReleaseRegistry,
)
from actors.release.routing import Mode, Outcome, Route
from actors.release.state import ReleaseStore
from models.exceptions import ModelNotFound

SIGNATURE = {"signature": {"inputs": [64], "outputs": [10]}, "task": "classify"}


class MemoryRegistry:
    """The registry's aliases, tags and signatures in dicts: model ``digits``, versions
    1..3, ``champion`` at 1, every version of the same signature unless told."""

    def __init__(self, signatures: dict[int, dict] | None = None) -> None:
        self.signatures = {v: SIGNATURE for v in (1, 2, 3)} | (signatures or {})
        self.aliases = {"digits": {"champion": 1}}
        self.tags: dict[tuple[int, str], str] = {}

    def all_aliases(self) -> dict[str, dict[str, int]]:
        return {name: dict(a) for name, a in self.aliases.items()}

    def aliased(self, model: str, alias: str) -> int:
        if alias not in self.aliases.get(model, {}):
            raise ModelNotFound(f"{model} has no alias {alias}", model=model, alias=alias)
        return self.aliases[model][alias]

    def signature(self, model: str, version: int) -> dict:
        if version not in self.signatures:
            raise ModelNotFound(f"{model} has no version {version}", model=model)
        return self.signatures[version]

    def set_alias(self, name: str, alias: str, version: int, reason: str = "") -> None:
        self.signature(name, version)
        self.aliases[name][alias] = version

    def remove_alias(self, name: str, alias: str) -> int | None:
        return self.aliases[name].pop(alias, None)

    def tag_version(self, name: str, version: int, key: str, value: str) -> None:
        self.tags[(version, key)] = value


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def new_controller(registry, clock, tmp_path):
    """``new_controller()``: a controller on ``registry`` whose state is in tmp_path (a
    second call is the same controller restarted). No background loop: tests tick."""
    uri = str(tmp_path / "releases.json")
    return lambda: ReleaseController(registry, uri, tick_s=None, clock=clock)


def _config(**fields) -> dict:
    """A canary of v2: two steps of at least 10 s and 20 candidate answers each."""
    defaults = {"model": "digits", "candidate": 2, "steps": [50, 100], "min_step_s": 10}
    return ReleaseConfig(**(defaults | {"min_requests": 20} | fields)).model_dump()


async def _answers(controller, version: int, n: int, *, ok=True, agreed: bool | None = True):
    await controller.record(
        [Outcome("digits", version, ok, 5.0, agreed if version != 1 else None)] * n
    )


async def _a_step_of_good_answers(controller, clock: Clock) -> None:
    await _answers(controller, 1, 40)
    await _answers(controller, 2, 40)
    clock.now += 11
    await controller.tick()


def test_a_good_canary_steps_up_and_is_promoted(new_controller, registry, clock, tmp_path):
    async def scenario():
        controller = new_controller()
        status = await controller.start(_config())
        assert registry.aliases["digits"] == {"champion": 1, "candidate": 2}
        routes = await controller.routes()
        assert routes["digits"] == Route(1, 2, 0.5, Mode.CANARY, True, status["id"])
        await controller.tick()  # nothing gathered yet: it holds, and says why
        (held,) = await controller.status("digits")
        assert held["state"] == "running" and held["next"]["action"] == "hold"
        assert "0 of 10 s, 0 of 20 candidate answers" in held["next"]["reason"]
        await _a_step_of_good_answers(controller, clock)
        return controller, await controller.status("digits")

    controller, (status,) = asyncio.run(scenario())
    assert status["state"] == ReleaseState.PROMOTED == "promoted"
    assert [e["action"] for e in status["history"]] == ["start", "step", "promote"]
    assert status["history"][1]["detail"] == "to 100 %"
    assert registry.aliases["digits"] == {"champion": 2}  # candidate alias gone
    assert asyncio.run(controller.routes())["digits"] == Route(champion=2)
    saved = json.loads((tmp_path / "releases.json").read_text())["releases"]
    assert saved[0]["state"] == "promoted" and len(saved[0]["history"]) == 3


def test_a_step_whose_candidate_gets_no_traffic_warns_once_and_moves_on_when_it_does(
    new_controller, clock
):
    async def scenario():
        controller = new_controller()
        await controller.start(_config(steps=[10, 100]))
        for _ in range(3):  # 200 champion answers a tick, none for the candidate
            await _answers(controller, 1, 200)
            clock.now += 11
            await controller.tick()
        stalled = copy.deepcopy((await controller.status("digits"))[0])  # history goes on
        await _answers(controller, 2, 40)  # callers inside the share arrive
        await controller.tick()
        return stalled, (await controller.status("digits"))[0]

    stalled, after = asyncio.run(scenario())
    assert [e["action"] for e in stalled["history"]] == ["start", "stalled"]
    assert "none of the step's 200 requests" in stalled["history"][1]["detail"]
    assert "X-User-ID" in stalled["history"][1]["detail"]
    assert stalled["state"] == "running" and stalled["next"]["action"] == "stalled"
    assert [e["action"] for e in after["history"]] == ["start", "stalled", "step", "promote"]


def test_a_bad_candidate_is_rolled_back_and_tagged(new_controller, registry, clock):
    async def scenario():
        controller = new_controller()
        await controller.start(_config())
        await _answers(controller, 1, 40)
        await _answers(controller, 2, 30, agreed=False)  # long before its 10 s are up
        await controller.tick()
        return controller, (await controller.status("digits"))[0]

    controller, status = asyncio.run(scenario())
    assert status["state"] == "rolled_back" and "next" not in status
    assert "agreement with the champion 0/30" in status["history"][-1]["detail"]
    assert registry.aliases["digits"] == {"champion": 1}
    assert registry.tags[(2, "aimass.release")].startswith(f"rolled_back in release {status['id']}")
    assert asyncio.run(controller.routes())["digits"] == Route(champion=1)


def test_the_champion_moved_outside_the_release_aborts_it(new_controller, registry):
    async def scenario():
        controller = new_controller()
        await controller.start(_config())
        registry.aliases["digits"]["champion"] = 3  # e.g. aimass models promote digits 3
        await controller.tick()
        return (await controller.status("digits"))[0]

    status = asyncio.run(scenario())
    assert status["state"] == "aborted"
    assert "the champion alias moved to v3 outside the release" in status["history"][-1]["detail"]


def test_a_shadow_that_passed_stays_candidate(new_controller, registry, clock):
    async def scenario():
        controller = new_controller()
        await controller.start(_config(mode="shadow", weight=100))
        assert (await controller.routes())["digits"].mode is Mode.SHADOW
        await _a_step_of_good_answers(controller, clock)
        return (await controller.status("digits"))[0]

    assert asyncio.run(scenario())["state"] == "passed"
    assert registry.aliases["digits"] == {"champion": 1, "candidate": 2}


def test_a_restarted_controller_carries_on_where_it_was(new_controller, clock):
    async def first_life():
        controller = new_controller()
        await controller.start(_config(steps=[10, 50, 100]))
        await _a_step_of_good_answers(controller, clock)

    asyncio.run(first_life())
    restarted = new_controller()
    (release,) = restarted.releases.values()
    assert (release.state, release.step, release.share) == (ReleaseState.RUNNING, 1, 0.5)
    assert asyncio.run(restarted.routes())["digits"].share == 0.5


def test_releases_saved_before_states_were_an_enum_still_load(tmp_path, registry, clock):
    """The layout the controller wrote when states were string constants."""
    config = ReleaseConfig(model="digits", candidate=2).model_dump()
    old = {
        "id": "0123456789ab",
        "model": "digits",
        "champion": 1,
        "candidate": 2,
        "config": config,
        "state": "rolled_back",
        "step": 1,
        "started": 1.0,
        "step_started": 2.0,
        "history": [{"at": 1.0, "action": "start", "share": 0.05, "detail": "canary"}],
    }
    uri = tmp_path / "releases.json"
    uri.write_text(json.dumps({"releases": [old]}, indent=1))
    (release,) = ReleaseStore(str(uri)).load().values()
    assert release.state is ReleaseState.ROLLED_BACK and release.config.candidate == 2
    assert release.to_json() == old  # and written back the same way
    controller = ReleaseController(registry, str(uri), tick_s=None, clock=clock)
    (status,) = asyncio.run(controller.status("digits"))
    assert status["state"] == "rolled_back" and status["share"] == 0.0


def test_refused_starts_say_why_and_move_no_alias(new_controller, registry):
    registry.signatures[3] = {"signature": {"inputs": [32]}, "task": "classify"}
    controller = new_controller()
    with pytest.raises(ReleaseError, match="already the champion"):
        asyncio.run(controller.start(_config(candidate=1)))
    with pytest.raises(ReleaseError, match="other shapes"):
        asyncio.run(controller.start(_config(candidate=3)))
    with pytest.raises(ModelNotFound):
        asyncio.run(controller.start(_config(candidate=9)))
    with pytest.raises(ModelNotFound):  # no candidate given, and no `candidate` alias
        asyncio.run(controller.start(_config(candidate=None)))
    assert registry.aliases["digits"] == {"champion": 1}
    asyncio.run(controller.start(_config()))
    with pytest.raises(ReleaseError, match=ABORT_COMMAND.format(model="digits")) as refused:
        asyncio.run(controller.start(_config()))
    assert refused.value.model == "digits"


def test_an_operator_aborts_a_running_release(new_controller, registry):
    controller = new_controller()
    asyncio.run(controller.start(_config(mode="ab", weight=30)))
    status = asyncio.run(controller.abort("digits", "the split answered its question"))
    assert status["state"] == "aborted"
    assert status["history"][-1]["detail"] == "the split answered its question"
    assert registry.aliases["digits"] == {"champion": 1}
    with pytest.raises(ReleaseError, match=STATUS_COMMAND.format(model="digits")):
        asyncio.run(controller.abort("digits"))


def test_feedback_scores_every_version_that_answered(new_controller):
    controller = new_controller()
    outcomes = [
        Outcome("digits", 1, True, 5.0, request_id="r1", predictions=[3, 4]),
        Outcome("digits", 2, True, 5.0, True, request_id="r1", predictions=[3, 5]),
    ]
    asyncio.run(controller.record(outcomes))
    with pytest.raises(ValueError, match="3 labels for a request of 2 instances"):
        asyncio.run(controller.feedback("digits", "r1", [3, 4, 5]))
    assert controller.windows.of("digits", 1).labelled == 0  # nothing scored half-way
    assert asyncio.run(controller.feedback("digits", "r1", [3, 4])) == {1: 1.0, 2: 0.5}
    with pytest.raises(KeyError):
        asyncio.run(controller.feedback("digits", "never-seen", [1]))


def test_the_deployed_parts_are_the_clusters_registry_and_storage(settings_env):
    """What the deployed actor builds in its own process (named by import path)."""
    parts = pkgutil.resolve_name(DEPLOYED_PARTS)()
    assert isinstance(parts["registry"], ReleaseRegistry)
    assert parts["state_uri"] == f"{settings_env.storage_root}/releases.json"
    assert parts["registry"].all_aliases() == {}
