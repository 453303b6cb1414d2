"""``jobs.pipeline``: its configs (the flags each stage takes, those the pipeline keeps for
itself), how the stages chain their versions, and where a resubmitted run resumes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.configs import PIPELINES, PipelineConfig, Stage, pipeline
from jobs.configs.pipeline import as_argv
from jobs.pipeline import (
    PipelineState,
    StageRecord,
    Status,
    made,
    parse,
    preflight,
    reason,
    run_stage,
    stage_argv,
    start_or_resume,
)

DONE = Status.DONE


def state_after(*records: tuple[Stage, str | None], name: str = "p1") -> PipelineState:
    state = PipelineState(name, "digits", "sha")
    for stage, version in records:
        state = state.record(stage, StageRecord(DONE, version))
    return state


@pytest.mark.parametrize(
    ("name", "stages"),
    [
        ("digits", ["ingest", "train", "evaluate", "release"]),
        (
            "digits_int8",
            ["ingest", "train", "evaluate", "compress", "evaluate_compressed", "release"],
        ),
        ("digits_fine_tune", ["ingest", "train", "evaluate", "release"]),
        ("digits_smoke", ["ingest", "train", "evaluate"]),
    ],
)
def test_every_preset_is_valid_and_plans_its_stages(name, stages):
    """(digits_refresh: in the test of --source, which it needs.)"""
    cfg = pipeline(name)
    assert [s.value for s in cfg.stages()] == stages
    preflight(cfg)  # every stage's flags pass its own job's config


def test_an_unknown_preset_names_the_ones_there_are():
    with pytest.raises(ValueError, match="Unknown pipeline 'nope'; presets: digits, "):
        pipeline("nope")
    assert set(PIPELINES) >= {"digits", "digits_smoke"}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"evaluate": {"model": "digits@1"}}, "'model' is set by the pipeline; leave it out"),
        ({"release": {"candidate": 3}}, "'candidate' is set by the pipeline"),
        ({"train_set": ["promote=true"]}, "'promote=true' is set by the pipeline"),
        ({"evaluate": {"Min-Accuracy": 1}}, "write a flag as its field name"),
        ({"from": "digits/../x"}, "Invalid model name 'digits/../x'"),
        ({"gates": {}}, "Extra inputs are not permitted"),
    ],
)
def test_a_config_that_would_break_the_chain_is_refused(fields, expected):
    with pytest.raises(ValidationError, match=expected):
        PipelineConfig(**fields)


def test_flags_render_as_the_jobs_take_them():
    assert as_argv({"max_accuracy_drop": 0.01, "promote": False, "steps": "5,100"}) == [
        "--max-accuracy-drop", "0.01", "--promote", "false", "--steps", "5,100"
    ]  # fmt: skip


def test_the_stages_chain_the_versions_they_make():
    cfg = PipelineConfig(
        from_="digits@champion",
        train_set=["epochs=5"],
        evaluate={"min_accuracy": 0.9},
        compress={"method": "int8_dynamic"},
    )
    state = state_after()
    assert stage_argv(Stage.INGEST, cfg, state) == ["--dataset", "digits"]
    assert stage_argv(Stage.TRAIN, cfg, state) == [
        "--config", "digits_cnn", "--name", "p1-train", "--from", "digits@champion",
        "--set", "dataset=digits", "--set", "promote=false", "--set", "epochs=5",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="stage train has made no version yet"):
        stage_argv(Stage.EVALUATE, cfg, state)
    state = state_after((Stage.INGEST, None), (Stage.TRAIN, "digits@5"))
    assert stage_argv(Stage.EVALUATE, cfg, state) == [
        "--model", "digits@5", "--dataset", "digits", "--min-accuracy", "0.9"
    ]  # fmt: skip
    assert stage_argv(Stage.COMPRESS, cfg, state)[:2] == ["--from", "digits@5"]
    assert stage_argv(Stage.RELEASE, cfg, state) == ["--model", "digits", "--candidate", "5"]
    state = state.record(Stage.COMPRESS, StageRecord(DONE, "digits@6"))
    assert stage_argv(Stage.EVALUATE_COMPRESSED, cfg, state)[:2] == ["--model", "digits@6"]
    assert stage_argv(Stage.RELEASE, cfg, state)[:4] == ["--model", "digits", "--candidate", "6"]


def test_a_stage_names_the_version_from_its_log():
    lines = [
        "(RayTrainWorker pid=9) [train] epoch 2/2 ...",
        "[train] registered digits version 7 (parent digits@3); test accuracy 0.98",
    ]
    assert made(Stage.TRAIN, lines, state_after()) == "digits@7"
    assert made(Stage.EVALUATE, [], state_after((Stage.TRAIN, "digits@7"))) == "digits@7"
    with pytest.raises(ValueError, match="finished without registering"):
        made(Stage.COMPRESS, ["[compress] int8_dynamic of digits version 7"], state_after())


def test_a_resubmission_resumes_at_the_first_stage_not_done():
    cfg = pipeline("digits_int8")
    plan = cfg.stages()
    fresh = start_or_resume(None, "p1", "digits_int8", cfg)
    assert fresh.next_stage(plan) == Stage.INGEST
    state = fresh.record(Stage.INGEST, StageRecord(DONE)).record(
        Stage.TRAIN, StageRecord(DONE, "digits@5")
    )
    state = state.record(Stage.EVALUATE, StageRecord(Status.FAILED, detail="gate FAILED"))
    saved = PipelineState.from_json(state.to_json())  # as stored between submissions
    assert saved == state
    resumed = start_or_resume(saved, "p1", "digits_int8", cfg)
    assert resumed.next_stage(plan) == Stage.EVALUATE  # a failed stage runs again
    for stage in plan[2:]:
        resumed = resumed.record(stage, StageRecord(DONE, "digits@6"))
    assert resumed.next_stage(plan) is None


def test_a_name_that_ran_another_config_is_refused():
    saved = start_or_resume(None, "p1", "digits", pipeline("digits"))
    with pytest.raises(SystemExit, match=r"p1 ran config digits as it was then .* choose"):
        start_or_resume(saved, "p1", "digits_int8", pipeline("digits_int8"))


def test_a_failed_stage_says_why_from_its_log():
    lines = [
        "[evaluate] gate accuracy vs champion: 0.9500 >= 0.9750 FAILED by 0.0250",
        "[evaluate] gate latency_p99_ms: 0.4 <= 50 passed",
        "[evaluate] digits version 6 failed its gates; no alias moved",
    ]
    assert reason(lines, 1) == (
        "[evaluate] gate accuracy vs champion: 0.9500 >= 0.9750 FAILED by 0.0250; "
        "[evaluate] digits version 6 failed its gates; no alias moved"
    )
    assert reason([], 137) == "exit status 137"


def test_a_stage_runs_as_its_own_job_process_and_its_refusal_is_the_reason():
    code, lines = run_stage(Stage.EVALUATE, ["--model", "digits@1", "--min-accuracy", "2"])
    assert code == 2
    assert "--min-accuracy '2': Input should be less than or equal to 1" in reason(lines, code)


def test_bad_stage_flags_are_refused_before_any_stage_runs(capsys):
    with pytest.raises(SystemExit) as exit_:
        preflight(PipelineConfig(evaluate={"min_accuracy": "high"}))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "jobs.pipeline: stage evaluate: error: --min-accuracy 'high': Input should be a " in err
    with pytest.raises(SystemExit):
        preflight(PipelineConfig(train_set=["epochs=x"]))
    assert "stage train: error: --set epochs='x'" in capsys.readouterr().err


def test_from_on_the_command_line_makes_the_run_a_fine_tune():
    name, config, cfg, _ = parse(["--config", "digits_smoke", "--from", "digits@3", "--name", "p2"])
    assert (name, config, cfg.from_) == ("p2", "digits_smoke", "digits@3")
    assert parse(["--config", "digits"])[0].startswith("digits-")


def test_new_data_on_the_command_line_is_ingested_first_and_chained_through(capsys):
    argv = ["--config", "digits_refresh", "--dataset", "scans_dec", "--source", "s3://b/new/"]
    _, _, cfg, _ = parse([*argv, "--name", "r1"])
    preflight(cfg)
    assert [s.value for s in cfg.stages()] == ["ingest", "train", "evaluate", "release"]
    state = PipelineState("r1", "digits_refresh", "sha")
    assert stage_argv(Stage.INGEST, cfg, state) == [
        "--dataset", "scans_dec", "--source", "s3://b/new/"
    ]  # fmt: skip
    assert "dataset=scans_dec" in stage_argv(Stage.TRAIN, cfg, state)
    assert cfg.from_ == "digits@champion" and cfg.release["min_agreement"] == 0.0

    with pytest.raises(SystemExit) as exit_:  # the preset names new data: it needs some
        preflight(parse(["--config", "digits_refresh"])[2])
    assert exit_.value.code == 2 and "give --source" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", "digits_refresh", "--dataset", "Bad Name", "--source", "x"])
    assert exit_.value.code == 2 and "--dataset" in capsys.readouterr().err


def test_an_armed_pipeline_waits_for_the_alert_of_the_model_it_refreshes(
    settings_env, monkeypatch, capsys
):
    from jobs.pipeline import refreshed_model

    assert refreshed_model(pipeline("digits_refresh")) == "digits"  # the fine-tuned one's
    assert refreshed_model(pipeline("digits_smoke")) == "digits_pipeline"  # register_as
    assert refreshed_model(pipeline("digits")) == "digits"  # the preset's
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", "digits", "--on-alert", "AimassDrift"])
    assert exit_.value.code == 2 and "AimassInputDrift" in capsys.readouterr().err
    monkeypatch.setenv("AIMASS_PROMETHEUS", "off")
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", "digits", "--on-alert", "AimassInputDrift"])
    assert exit_.value.code == 2 and "runs no Prometheus" in capsys.readouterr().err
