"""The tuning job's parts with logic of their own: the report's rows and table, PBT's
checkpoints and log lines, a trial's final result, the MLflow runs of an experiment, and
the search algorithm each ``--search`` builds."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from optuna.samplers import NSGAIISampler
from pydantic import ValidationError
from ray.train import Checkpoint
from ray.tune import Result
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from jobs._private import runs
from jobs._private.tune import tuner
from jobs._private.tune.context import EPOCHS
from jobs._private.tune.pbt import describe_start, for_tune
from jobs._private.tune.report import markdown_table, trial_rows
from jobs._private.tune.tracking import final_result
from jobs.configs import Param, TuneJobConfig
from models.registry import Registry

JOB = TuneJobConfig(name="search", space={"lr": Param.parse("loguniform:1e-4:1e-2")})


def result(trial: str, lr: float, scores: list[float], error: Exception | None = None) -> Result:
    """A trial's Result as Tune's ResultGrid holds it: last metrics and the history."""
    history = pd.DataFrame({EPOCHS: range(1, len(scores) + 1), "val_accuracy": scores})
    last = {"trial_id": trial, "config": {"lr": lr}, EPOCHS: len(scores)}
    if scores:
        last["val_accuracy"] = scores[-1]
    return Result(last, None, error, f"/x/trial_{trial}", history if scores else None)


def test_report_rows_are_best_first_with_unscored_trials_last():
    results = [
        result("a", 0.001, [0.5, 0.7]),
        result("b", 0.01, []),
        result("c", 0.0123456, [0.9, 0.8]),
    ]
    rows = trial_rows(results, JOB)
    assert [row["trial"] for row in rows] == ["c", "a", "b"]
    assert rows[0] == {
        "trial": "c",
        "status": "TERMINATED",
        "lr": "0.0123",
        "epochs": 2,
        "last_val_accuracy": 0.8,
        "best_val_accuracy": 0.9,
    }
    assert (rows[2]["last_val_accuracy"], rows[2]["best_val_accuracy"]) == (None, None)


def test_a_failed_trial_is_reported_as_an_error():
    (row,) = trial_rows([result("a", 0.001, [0.5], error=RuntimeError("boom"))], JOB)
    assert row["status"] == "ERROR"


def test_markdown_table_has_a_header_rule_and_one_line_per_row():
    table = markdown_table([{"trial": "a", "score": 0.5}, {"trial": "b", "score": None}])
    assert table == "| trial | score |\n|---|---|\n| a | 0.5 |\n| b | None |\n"


def test_final_result_keeps_what_tune_and_publishing_need():
    metrics = {"val_accuracy": 0.9, "epoch": 1, EPOCHS: 2, CHECKPOINT_PATH_KEY: "/c", "x": 1}
    assert final_result(metrics, "val_accuracy") == {k: v for k, v in metrics.items() if k != "x"}


def test_pbt_log_lines_say_who_restarts_from_whose_checkpoint():
    exploit = describe_start("t1", "t0", 2, {"lr": 2e-5}, {"lr": 0.009, "seed": 0})
    assert exploit == "[tune] trial t1 exploits t0's checkpoint of epoch 2, lr 2e-05 -> 0.009"
    # the form tests/e2e/test_tune.py reads back from the job log
    pattern = r"\[tune\] trial (\S+) exploits (\S+)'s checkpoint of epoch (\d+), lr (\S+) -> (\S+)"
    assert re.fullmatch(pattern, exploit)
    own = describe_start("t1", "t1", 3, {"lr": 0.001}, {"lr": 0.001})
    assert own == "[tune] trial t1 resumes from its checkpoint of epoch 3"


def test_pbt_gets_every_epochs_checkpoint_but_the_last(tmp_path):
    saved = Checkpoint(str(tmp_path))
    meta = {"trial": "t0", "config": {"lr": 0.001}}
    metrics = {EPOCHS: 1}
    checkpoint = for_tune(metrics, saved, meta, epochs=3)
    assert checkpoint.path == saved.path and metrics[CHECKPOINT_PATH_KEY] == saved.path
    assert checkpoint.get_metadata() == {**meta, "epoch": 1}  # what start_from reads
    last = {EPOCHS: 3}
    assert for_tune(last, saved, meta, epochs=3) is None
    assert last[CHECKPOINT_PATH_KEY] == saved.path  # still published from
    assert for_tune({EPOCHS: 2}, None, meta, epochs=3) is None  # an epoch without one


def test_a_trials_sampled_values_are_validated_as_the_fields_types():
    job = TuneJobConfig(name="search", space={"grad_accum": Param.parse("randint:1:4")})
    assert job.trial("00000", {"grad_accum": 2.0}).grad_accum == 2
    with pytest.raises(ValidationError, match="grad_accum"):
        job.trial("00000", {"grad_accum": 2.4})  # a mutation that left the integers


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


def test_one_run_helper_serves_jobs_experiments_and_their_nested_trials(registry):
    with runs.mlflow_run(registry, "digits", "search", {"samples": 4}, {"a": "1"}) as parent:
        trial = runs.create_run(
            registry, "digits", "search-0", {"lr": 0.01}, {"b": "2"}, parent_run_id=parent
        )
        runs.close(registry, trial, "FINISHED")
    got = registry.client.get_run(trial)
    assert got.data.tags[runs.PARENT_TAG] == parent and got.data.params == {"lr": "0.01"}
    assert registry.client.get_run(parent).info.status == "FINISHED"
    assert registry.client.get_run(parent).data.params == {"samples": "4"}
    runs.reopen(registry, parent)
    with pytest.raises(KeyboardInterrupt), runs.closing(registry, parent):
        raise KeyboardInterrupt  # a driver stopped: its run is not left RUNNING
    assert registry.client.get_run(parent).info.status == "FAILED"


def drawn(job: TuneJobConfig, concurrency: int = 100) -> list[dict]:
    """The configs Tune's variant generator makes of ``job`` (random or grid), in order."""
    generator = tuner.search(job, concurrency)
    assert isinstance(generator, BasicVariantGenerator)
    spec = {"run": lambda config: None, "config": job.param_space(), "num_samples": job.samples}
    generator.add_configurations({job.name: spec})
    trials = iter(generator.next_trial, None)
    return [{key: trial.config[key] for key in job.space} for trial in trials]


def test_grid_search_trials_exactly_the_declared_points_samples_times():
    space = {"lr": Param.parse("choice:1e-3,1e-2"), "batch_size": Param.parse("choice:16,64")}
    job = TuneJobConfig(name="search", search="grid", space=space, samples=2)
    configs = drawn(job)
    points = [{"lr": lr, "batch_size": bs} for lr in (1e-3, 1e-2) for bs in (16, 64)]
    assert len(configs) == job.trials == 8
    assert sorted(configs, key=str) == sorted(points * 2, key=str)
    assert tuner.max_concurrent(job.model_copy(update={"max_concurrent": 3}), job.base()) == 3


def test_random_search_samples_the_space_and_its_seed_repeats_it():
    job = TuneJobConfig(name="search", search="random", samples=4)
    configs = drawn(job)
    assert len(configs) == 4 and len({c["lr"] for c in configs}) == 4
    assert all(1e-4 <= c["lr"] <= 2e-2 and c["batch_size"] in (16, 32, 64) for c in configs)
    assert drawn(job) == configs


def suggested(job: TuneJobConfig, trials: int, score=lambda config: config["lr"]):
    """``job``'s Optuna searcher and what it proposes, each trial scored as it ends."""
    searcher = tuner.search(job, concurrency=1)
    searcher.set_search_properties("val_accuracy", "max", job.param_space())
    configs = []
    for i in range(trials):
        configs.append(searcher.suggest(f"t{i}"))
        searcher.on_trial_complete(f"t{i}", {"val_accuracy": score(configs[-1])})
    return searcher, configs


def test_evolution_is_optunas_nsga2_seeded_by_the_jobs_seed():
    job = TuneJobConfig(name="search", search="evolution", samples=9, seed=3)
    searcher, first = suggested(job, 6)
    sampler = searcher._sampler  # what OptunaSearch hands to its study
    assert isinstance(searcher, OptunaSearch) and isinstance(sampler, NSGAIISampler)
    assert sampler.population_size == job.population == 3
    assert suggested(job, 6)[1] == first  # the same seed breeds the same trials
    assert suggested(job.model_copy(update={"seed": 4}), 6)[1] != first
    assert {c["batch_size"] for c in first} <= {16, 32, 64}  # categorical bred as well
    # Generation 0 is the first population's 3 trials; the 4th is bred from them.
    generations = [t.system_attrs["NSGAIISampler:generation"] for t in searcher._ot_study.trials]
    assert generations == [0, 0, 0, 1, 1, 1]


def test_tpe_stays_optunas_default_sampler_with_the_seed():
    searcher = tuner.search(TuneJobConfig(name="search", seed=5), concurrency=1)
    assert isinstance(searcher, OptunaSearch)
    assert searcher._sampler is None and searcher._seed == 5  # TPESampler(seed=5) at setup
