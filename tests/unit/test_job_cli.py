"""The jobs' one config path: flags and ``--set`` overrides validated by pydantic, a bad one
refused with exit status 2 and one line naming the flag, the value and what is accepted."""

from __future__ import annotations

import pytest

from jobs.ingest import IngestConfig
from jobs.train import parse as parse_train
from jobs.tune import parse as parse_tune


def refusal(parse, argv: list[str], capsys) -> str:
    """The one line ``parse(argv)`` exits with (status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_train_applies_good_overrides_and_names_the_run():
    cfg = parse_train(["--config", "digits_cnn_smoke", "--set", "epochs=2", "--set",
                       "use_gpu=false", "--set", "lr=1e-3", "--name", "run-1"])  # fmt: skip
    assert (cfg.name, cfg.epochs, cfg.use_gpu, cfg.lr, cfg.min_accuracy) == (
        "run-1", 2, False, 1e-3, 0.0
    )  # fmt: skip
    assert parse_train([]).name.startswith("digits_cnn-")  # the default preset


@pytest.mark.parametrize("parse", [parse_train, parse_tune], ids=["train", "tune"])
@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("use_gpu=ture", "--set use_gpu='ture': Input should be a valid boolean"),
        ("epochs=x", "--set epochs='x': Input should be a valid integer"),
        ("nosuch=1", "--set nosuch='1': no such key; use one of architecture, augment,"),
        ("epochs", "--set 'epochs': write KEY=VALUE"),
    ],
)
def test_a_bad_override_is_one_line_naming_the_key_value_and_fix(parse, pair, expected, capsys):
    err = refusal(parse, ["--set", pair, "--name", "s"], capsys)
    assert f"error: {expected}" in err
    if pair == "use_gpu=ture":
        assert "accepted: true, false, yes, no, on, off, 1, 0" in err
    if pair == "nosuch=1":
        assert "use_gpu" in err and "zero_stage" in err


def test_an_unknown_preset_is_refused_in_one_line(capsys):
    err = refusal(parse_train, ["--config", "nope"], capsys)
    assert "invalid choice: 'nope'" in err and "digits_cnn_smoke" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--samples", "x"], "--samples 'x': Input should be a valid integer"),
        (["--scheduler", "nope"], "--scheduler 'nope': Input should be 'asha', 'fifo' or 'pbt'"),
        (["--space", "lr=loguniform:0:1"], "--space lr=loguniform:0:1: loguniform needs low > 0"),
        (["--space", "lr=log:1:2"], "--space lr: kind 'log': Input should be 'loguniform', "),
        (["--space", "name=choice:a,b"], "space: 'name' is not a tunable field"),
        (["--grace-period", "9"], "grace_period 9 exceeds the preset's 3 epochs"),
    ],
)
def test_tune_flags_are_validated_by_its_config(argv, expected, capsys):
    assert expected in refusal(parse_tune, [*argv, "--name", "s"], capsys)


def test_tune_keeps_the_fixed_overrides_and_the_space():
    job, resume = parse_tune(["--set", "num_workers=1", "--space", "lr=uniform:0.001:0.01",
                              "--samples", "3", "--name", "s"])  # fmt: skip
    assert (job.overrides, job.samples, resume) == (("num_workers=1",), 3, False)
    assert (job.space["lr"].kind, job.base().num_workers) == ("uniform", 1)


def test_the_other_jobs_flags_take_the_same_path(capsys):
    from jobs._private.cli import parse_config

    def parse(argv: list[str]) -> IngestConfig:
        return parse_config(IngestConfig, "ingest", argv)

    assert parse(["--shards", "3"]).shards == 3
    err = refusal(parse, ["--shards", "x"], capsys)
    assert "--shards 'x': Input should be a valid integer" in err


def test_a_run_can_be_kept_in_one_datacenter_and_a_bad_name_is_refused():
    from jobs.configs import preset
    from jobs.configs.validation import OverrideError

    cfg = preset("digits_cnn").with_overrides(["datacenter=eu-west"])
    assert cfg.placement() == {"ray.io/availability-region": "eu-west"}
    assert preset("digits_cnn").placement() is None  # anywhere by default
    with pytest.raises(OverrideError, match="datacenter"):
        preset("digits_cnn").with_overrides(["datacenter=eu west"])
