"""The tuning job's parts with logic of their own: the report's rows and table, PBT's
checkpoints and log lines, a trial's final result, and the MLflow runs of an experiment."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from pydantic import ValidationError
from ray.train import Checkpoint
from ray.tune import Result
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from jobs._private import runs
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
