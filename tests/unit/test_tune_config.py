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


def test_pbt_samples_at_random_and_mutates_every_dimension_of_the_space():
    job = TuneJobConfig(name="search", scheduler="pbt", samples=4, perturbation_interval=2)
    assert job.search == "random"  # pbt's default: its own mutations replace a searcher
    mutations = job.mutations()
    assert mutations["batch_size"] == [16, 32, 64]  # a choice moves to a neighbour
    assert (mutations["lr"].lower, mutations["lr"].upper) == (1e-4, 2e-2)
    assert str(mutations["lr"].get_sampler()) == "LogUniform"  # multiplied, or resampled


def test_pbt_mutations_stay_inside_the_space():
    space = {"lr": Param.parse("loguniform:1e-4:1e-2"), "grad_accum": Param.parse("randint:1:4")}
    job = TuneJobConfig(name="search", scheduler="pbt", samples=2, space=space)
    clamped = job.clamp({"lr": 1.2e-2, "grad_accum": 5, "seed": 3})
    assert clamped == {"lr": 1e-2, "grad_accum": 3, "seed": 3}  # randint's high is exclusive
    assert job.clamp({"lr": 5e-3, "grad_accum": 2}) == {"lr": 5e-3, "grad_accum": 2}
    assert isinstance(clamped["grad_accum"], int)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"search": "optuna"}, "search optuna cannot drive pbt"),
        ({"samples": 1}, "pbt needs a population"),
        ({"perturbation_interval": 3}, "leaves no epoch to perturb in the preset's 3"),
        ({"perturbation_interval": 0}, "greater than or equal to 1"),
    ],
)
def test_a_pbt_search_that_cannot_run_is_refused_before_it_starts(kwargs, message):
    with pytest.raises((ValueError, ValidationError), match=message):
        TuneJobConfig(name="search", scheduler="pbt", **{"samples": 4, **kwargs})


def test_the_saved_pbt_config_loads_back_unchanged():
    job = TuneJobConfig(name="search", scheduler="pbt", samples=4)
    assert TuneJobConfig.model_validate(job.model_dump(mode="json")) == job


def test_the_command_line_selects_pbt_and_names_what_cannot_run(capsys):
    from jobs.tune import parse

    job, resume = parse(["--scheduler", "pbt", "--perturbation-interval", "2", "--name", "s"])
    assert (job.scheduler, job.search, job.perturbation_interval, resume) == (
        "pbt", "random", 2, False
    )  # fmt: skip
    with pytest.raises(SystemExit):
        parse(["--scheduler", "pbt", "--search", "optuna", "--name", "s"])
    assert "use --search random (pbt's default)" in capsys.readouterr().err


GRID = {"lr": Param.parse("choice:1e-3,1e-2"), "grad_accum": Param.parse("randint:1:4")}


def test_grid_tries_every_combination_of_the_finite_dimensions_once_by_default():
    job = TuneJobConfig(name="search", search="grid", space=GRID)
    assert job.samples == 1 and job.trials == 6  # 2 choices x 3 integers, the grid once
    assert job.param_space() == {
        "lr": {"grid_search": [1e-3, 1e-2]},
        "grad_accum": {"grid_search": [1, 2, 3]},  # randint's high is exclusive
    }
    assert TuneJobConfig(name="s", search="grid", space=GRID, samples=3).trials == 18


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"lr is a loguniform range: .* --space lr=choice:0.0001,0.02"),
        ({"space": {**GRID, "grad_clip": Param.parse("uniform:0.5:2")}}, "grad_clip=choice:0.5,2"),
        ({"space": GRID, "samples": 2000}, "makes 12000 trials, over 10000"),
        ({"space": GRID, "scheduler": "pbt"}, "search grid cannot drive pbt"),
    ],
)
def test_a_grid_that_cannot_be_built_names_the_flag_that_fixes_it(kwargs, message):
    with pytest.raises((ValueError, ValidationError), match=message):
        TuneJobConfig(name="search", search="grid", **kwargs)


def test_evolution_breeds_generations_of_about_the_square_root_of_samples():
    assert TuneJobConfig(name="s", search="evolution", samples=16).population == 4
    assert TuneJobConfig(name="s", search="evolution", samples=2).population == 2
    assert TuneJobConfig(name="s", search="evolution", population_size=5).population == 5
    with pytest.raises(ValidationError, match="search evolution cannot drive pbt"):
        TuneJobConfig(name="s", search="evolution", scheduler="pbt", samples=4)


def test_the_command_line_builds_a_grid_and_names_the_flag_when_it_cannot(capsys):
    from jobs.tune import parse

    argv = ["--search", "grid", "--space", "lr=choice:1e-3,1e-2", "--samples", "2", "--name", "s"]
    job, _ = parse(argv)
    assert (job.search, job.samples, job.trials) == ("grid", 2, 4)
    with pytest.raises(SystemExit):
        parse(["--search", "grid", "--name", "s"])  # the default space's float ranges
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("--space lr=choice:0.0001,0.02 (given, --space replaces the whole "
                        "default space).")  # fmt: skip
