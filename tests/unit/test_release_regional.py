"""Regional aliases (actors/release/aliases.py): two clusters' controllers on one shared
registry; a release in one region moves only that region's champion. Without regional
aliases a controller behaves as a single cluster's always did."""

from __future__ import annotations

import asyncio

from test_release_controller import (  # tests/unit's own module, on pytest's path
    Clock,
    MemoryRegistry,
    _a_step_of_good_answers,
    _answers,
    _config,
)

from actors.release import ReleaseController
from actors.release.aliases import release_region, serving
from actors.release.routing import Route
from actors.release.state import ReleaseStore


def test_the_rule_regional_when_pinned_else_the_models_own():
    pinned = {"champion": 1, "champion-eu-west": 2}
    assert release_region(pinned, "eu-west") == "eu-west" and serving(pinned, "eu-west") == 2
    assert release_region(pinned, "us-east") is None and serving(pinned, "us-east") == 1
    assert release_region(pinned, None) is None and serving(pinned, None) == 1
    assert serving({"candidate": 3}, "eu-west") is None


def _controllers(tmp_path, registry, clock):
    return {
        dc: ReleaseController(
            registry, str(tmp_path / f"{dc}.json"), tick_s=None, clock=clock, region=dc
        )
        for dc in ("us-east", "eu-west")
    }


def test_a_release_in_one_region_promotes_there_only(tmp_path):
    registry, clock = MemoryRegistry(), Clock()
    registry.aliases["digits"] |= {"champion-us-east": 1, "champion-eu-west": 1}  # pinned
    controllers = _controllers(tmp_path, registry, clock)

    async def scenario():
        us, eu = controllers["us-east"], controllers["eu-west"]
        status = await us.start(_config())
        assert "against champion-us-east v1" in status["history"][0]["detail"]
        assert registry.aliases["digits"]["candidate-us-east"] == 2
        assert "candidate" not in registry.aliases["digits"]
        await _a_step_of_good_answers(us, clock)
        (done,) = await us.status("digits")
        await eu.tick()
        return done, await us.routes(), await eu.routes()

    done, us_routes, eu_routes = asyncio.run(scenario())
    assert done["state"] == "promoted" and done["region"] == "us-east"
    assert registry.aliases["digits"] == {
        "champion": 1,
        "champion-us-east": 2,
        "champion-eu-west": 1,
    }
    assert us_routes["digits"] == Route(champion=2)
    assert eu_routes["digits"] == Route(champion=1)  # eu-west still serves the old one
    saved = ReleaseStore(str(tmp_path / "us-east.json")).load()["digits"]
    assert saved.region == "us-east"  # a restarted controller keeps moving the same alias


def test_a_regional_rollback_leaves_every_champion_where_it_was(tmp_path):
    registry, clock = MemoryRegistry(), Clock()
    registry.aliases["digits"] |= {"champion-eu-west": 1}
    eu = _controllers(tmp_path, registry, clock)["eu-west"]

    async def scenario():
        await eu.start(_config())
        await _answers(eu, 1, 40)
        await _answers(eu, 2, 30, agreed=False)
        await eu.tick()
        return (await eu.status("digits"))[0]

    assert asyncio.run(scenario())["state"] == "rolled_back"
    assert registry.aliases["digits"] == {"champion": 1, "champion-eu-west": 1}
    assert registry.tags[(2, "aimass.release")].startswith("rolled_back")


def test_moving_the_regional_champion_outside_the_release_aborts_it(tmp_path):
    registry, clock = MemoryRegistry(), Clock()
    registry.aliases["digits"] |= {"champion-eu-west": 1}
    eu = _controllers(tmp_path, registry, clock)["eu-west"]

    async def scenario():
        await eu.start(_config())
        registry.aliases["digits"]["champion"] = 3  # the global one: not this release's
        await eu.tick()
        running = (await eu.status("digits"))[0]["state"]
        registry.aliases["digits"]["champion-eu-west"] = 3
        await eu.tick()
        return running, (await eu.status("digits"))[0]

    running, status = asyncio.run(scenario())
    assert running == "running" and status["state"] == "aborted"


def test_without_regional_aliases_a_region_changes_nothing(tmp_path):
    """A cluster that names its region, on a registry with no alias of it: as before."""
    registry, clock = MemoryRegistry(), Clock()
    registry.aliases["digits"] |= {"champion-us-east": 3}  # another region's pin
    eu = _controllers(tmp_path, registry, clock)["eu-west"]

    async def scenario():
        await eu.start(_config())
        await _a_step_of_good_answers(eu, clock)
        return (await eu.status("digits"))[0]

    status = asyncio.run(scenario())
    assert status["state"] == "promoted" and "region" not in status  # the old layout
    assert registry.aliases["digits"] == {"champion": 2, "champion-us-east": 3}
