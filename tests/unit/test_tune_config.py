"""The tuning job's typed config: search domains and the checks that name the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.configs import Param, TuneJobConfig


def test_domains_parse_from_their_command_line_form():
    assert Param.parse("loguniform:1e-4:1e-2") == Param(kind="loguniform", low=1e-4, high=1e-2)
    assert Param.parse("randint:1:5") == Param(kind="randint", low=1, high=5)
    assert Param.parse("choice:16,32,64").values == (16, 32, 64)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("loguniform:0:1", "loguniform needs low > 0"),
        ("uniform:3:1", "needs low < high"),
        ("choice:", "a choice needs values"),
        ("uniform:a:b", "write KIND:LOW:HIGH"),
    ],
)
def test_bad_domains_say_how_to_write_them(text, message):
    with pytest.raises((ValueError, ValidationError), match=message):
        Param.parse(text)


def test_a_trial_is_the_preset_plus_fixed_overrides_plus_its_sampled_values():
    job = TuneJobConfig(name="search", config="digits_cnn_smoke", overrides=("num_workers=1",))
    trial = job.trial("00001", {"lr": 0.005, "batch_size": 64, "weight_decay": 1e-5})
    assert (trial.lr, trial.batch_size, trial.num_workers) == (0.005, 64, 1)
    assert trial.name == "search-00001" and trial.checkpoint_every == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"space": {"name": Param.parse("choice:a,b")}}, "not a tunable field"),
        ({"overrides": ("lr=0.1",)}, "also fixed with --set"),
        ({"grace_period": 50}, "exceeds the preset's 3 epochs"),
        ({"config": "no_such_preset"}, "Unknown config"),
    ],
)
def test_a_search_that_cannot_run_is_refused_before_it_starts(kwargs, message):
    with pytest.raises((ValueError, ValidationError), match=message):
        TuneJobConfig(name="search", **kwargs)
