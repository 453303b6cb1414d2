"""`aimass rollout`: its plan from the registry's aliases, and its moves when each region's
release passes or fails (the jobs and the registry stood in for; the real thing:
tests/e2e/test_rollout.py)."""

from __future__ import annotations

import pytest

from cluster.cli import aimass, rollout
from cluster.exceptions import ClusterError

REGIONS = ["us-east", "eu-west", "ap-south"]


def test_a_fresh_rollout_pins_every_region_then_releases_in_order():
    p = rollout.plan({"champion": 1, "candidate": 2}, REGIONS, None)
    assert (p.champion, p.candidate) == (1, 2)
    assert p.pin == p.todo == tuple(REGIONS) and p.done == ()


def test_an_interrupted_rollout_resumes_where_it_was():
    aliases = {"champion": 1, "champion-us-east": 3, "champion-eu-west": 1}
    p = rollout.plan(aliases, REGIONS, 3)
    assert p.done == ("us-east",) and p.todo == ("eu-west", "ap-south")
    assert p.pin == ("ap-south",)


@pytest.mark.parametrize(
    ("aliases", "candidate", "match"),
    [
        ({"candidate": 2}, None, "no champion"),
        ({"champion": 1}, None, "no candidate"),
        ({"champion": 2}, 2, "is the champion already"),
        ({"champion": 1, "champion-eu-west": 5}, 2, "champion-eu-west points at v5"),
    ],
)
def test_a_rollout_that_cannot_start_says_why(aliases, candidate, match):
    with pytest.raises(ClusterError, match=match):
        rollout.plan(aliases, REGIONS, candidate)


def test_the_release_options_it_passes_on_are_jobs_release_options():
    from actors.release.config import ReleaseConfig, Thresholds
    from jobs.release import parse

    assert set(rollout.RELEASE_OPTIONS) <= set(ReleaseConfig.model_fields) | set(
        Thresholds.model_fields
    )
    args = aimass.parser().parse_args(
        ["rollout", "--model", "digits", "--candidate", "2", "--cluster", "us-east=http://h:1",
         "--steps", "20,100", "--min-step-s", "2", "--latency-slack-ms", "250"]
    )  # fmt: skip
    entrypoint = rollout._release_entrypoint("digits", 2, args)
    assert entrypoint.startswith("python -m jobs.release --model digits --candidate 2 ")
    _, config = parse(entrypoint.split()[3:])  # jobs.release accepts every flag
    assert config.steps == [20, 100] and config.min_step_s == 2
    assert config.thresholds.latency_slack_ms == 250


class Registry:
    """One model's aliases, with the moves recorded."""

    def __init__(self, aliases: dict[str, int]) -> None:
        self.aliases, self.moves = dict(aliases), []

    def all_aliases(self) -> dict[str, dict[str, int]]:
        return {"digits": dict(self.aliases)}

    def set_alias(self, name, alias, version, reason=""):
        self.aliases[alias] = version
        self.moves.append((alias, version, reason))

    def remove_alias(self, name, alias):
        return self.aliases.pop(alias, None)


@pytest.fixture
def world(monkeypatch, tmp_path, settings_env):
    """``world(fail_in=None)``: a registry and clusters whose releases pass (each moves its
    region's champion, as its controller does) or fail in ``fail_in``; returns the registry
    and the regions released in, in order."""
    import cluster.cli.jobs_client
    import models.registry

    def make(fail_in: str | None = None):
        registry = Registry({"champion": 1, "candidate": 2})
        released = []
        monkeypatch.setattr(models.registry.Registry, "from_settings", lambda _: registry)

        def run_job(settings, entrypoint, working_dir, echo, client):
            region = client.address.split("//")[1].split(".")[0]  # http://us-east.test:…
            released.append(region)
            assert "--candidate 2" in entrypoint
            echo("[release] digits: canary of v2")  # a job's line, brackets and all
            if region == fail_in:
                raise ClusterError("Job ended FAILED: [release] rollback: agreement 0/30")
            registry.aliases[f"champion-{region}"] = 2

        monkeypatch.setattr(cluster.cli.jobs_client, "run_job", run_job)
        monkeypatch.setattr(rollout, "_jobs_client", lambda url, token: _Client(url))
        return registry, released

    return make


class _Client:
    def __init__(self, address: str) -> None:
        self.address = address


def _argv(*regions: str) -> list[str]:
    argv = ["rollout", "--model", "digits"]
    for r in regions:
        argv += ["--cluster", f"{r}=http://{r}.test:8265"]
    return argv


def test_every_region_passed_moves_the_champion_and_unpins(world, capsys):
    registry, released = world()
    aimass.main(_argv(*REGIONS))
    assert released == REGIONS
    assert registry.aliases == {"champion": 2}  # candidate-<region> and pins gone
    pins = [m for m in registry.moves if m[0].startswith("champion-")][:3]
    assert pins == [(f"champion-{r}", 1, "rollout of v2: pinned first") for r in REGIONS]
    out = capsys.readouterr().out
    assert "Rolled out: digits@champion is v2" in out
    # each region's lines keep their prefix (not taken for rich markup), in rollout order
    lines = [f"[{r}] {what}" for r in REGIONS for what in ("release of v2", "[release]")]
    assert all(line in out for line in lines), out
    assert out.index("[us-east] promoted") < out.index("[eu-west] release of v2")


def test_a_failure_rolls_back_only_where_it_had_reached(world, capsys):
    registry, released = world(fail_in="eu-west")
    with pytest.raises(SystemExit) as exit_:
        aimass.main(_argv(*REGIONS))
    assert exit_.value.code == 1
    assert released == ["us-east", "eu-west"]  # ap-south never saw the candidate
    assert ("champion-us-east", 1, "rollout of v2 stopped at eu-west") in registry.moves
    assert registry.aliases == {"champion": 1}  # no regional alias left; v2 no candidate
    out = capsys.readouterr().out
    assert "The release in eu-west failed" in out and "moved back in us-east" in out
    assert "not started in ap-south" in out
