"""``jobs.train --from``: the config a fine-tune gets from its parent version, the configs
refused because the parent's weights would not fit them (one line naming the flag), and the
resubmission of a named run that must start from where its first submission started.

The parents are real packages registered in a real MLflow registry (SQLite in a temp folder).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from jobs._private.runs import create_run
from jobs.configs import TrainConfig, preset, preset_for
from jobs.train import RUN_NAME_TAG, check_resume, parse
from models import package
from models.onnx_export import export_onnx
from models.refs import CHAMPION
from models.registry import Registry
from models.weights import save_weights
from models.zoo import architecture, build_model

STUDENT = {"channels": 16, "hidden": 64}  # jobs.compress's default distilled student


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


def register(
    registry: Registry, tmp_path: Path, options: dict, weights: bool = True, name: str = "digits"
) -> int:
    """A digits CNN built with ``options`` registered as a new version of ``name``; its number.
    ``weights=False`` leaves the safetensors out, as an ensemble's package does."""
    folder = tmp_path / f"pkg-{len(list(tmp_path.glob('pkg-*')))}"
    folder.mkdir()
    model = build_model("digits_cnn", **options)
    if weights:
        save_weights(model, folder / package.WEIGHTS_FILE)
    export_onnx(model, torch.rand(2, 64), folder / package.ONNX_FILE)
    signature = architecture("digits_cnn").signature_for(options)
    package.PackageConfig("digits_cnn", signature, options, {"accuracy": 0.9}).write(folder)
    run = registry.client.create_run(registry.experiment(name))
    return registry.register(name, run.info.run_id, folder).version


@pytest.fixture
def champion(registry: Registry, tmp_path: Path) -> int:
    """digits v1, a digits CNN of the default options, as ``digits@champion``."""
    version = register(registry, tmp_path, {})
    registry.set_alias("digits", CHAMPION, version)
    return version


def refusal(argv: list[str], registry: Registry, capsys) -> str:
    """The one line ``parse`` exits with (status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        parse(argv, registry)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_an_alias_is_pinned_and_the_preset_is_the_parents_architectures(registry, champion):
    cfg = parse(["--from", "digits@champion"], registry)
    assert cfg.init_from == f"digits@{champion}"  # the version the alias pointed at, not it
    assert (cfg.architecture, cfg.model_options) == ("digits_cnn", {})
    assert cfg.epochs == preset("digits_cnn").epochs  # the preset's own settings otherwise
    assert cfg.register_as == "digits"  # a new version of the parent's model
    assert cfg.name.startswith(f"digits_cnn-from-digits-v{champion}-")


def test_a_named_config_and_overrides_apply_to_a_fine_tune(registry, champion):
    argv = ["--from", "digits@1", "--config", "digits_cnn_smoke", "--name", "ft-1",
            "--set", "epochs=2", "--set", "lr=5e-4", "--set", "register_as=digits_ft"]  # fmt: skip
    cfg = parse(argv, registry)
    assert (cfg.name, cfg.epochs, cfg.lr, cfg.min_accuracy) == ("ft-1", 2, 5e-4, 0.0)
    assert (cfg.init_from, cfg.register_as) == ("digits@1", "digits_ft")


def test_without_config_the_parents_own_options_build_the_model(registry, tmp_path):
    version = register(registry, tmp_path, STUDENT)
    cfg = parse(["--from", f"digits@{version}"], registry)
    assert (cfg.architecture, cfg.model_options) == ("digits_cnn", STUDENT)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--config", "digits_transformer"],
            "--config digits_transformer trains digits_transformer; --from digits@champion "
            "(digits@1, digits_cnn): its weights fit digits_cnn only. Leave out --config, or "
            "use one of digits_cnn, digits_cnn_zero1,",
        ),
        (
            ["--set", "architecture=digits_transformer"],
            "--set architecture=digits_transformer trains digits_transformer; --from",
        ),
        (["--config", "gpt_tiny"], "--config gpt_tiny trains gpt; --from digits@champion"),
    ],
)
def test_a_config_of_another_architecture_is_refused_naming_its_flag(
    registry, champion, flags, expected, capsys
):
    assert expected in refusal(["--from", "digits@champion", *flags], registry, capsys)


def test_a_config_of_other_model_options_is_refused(registry, tmp_path, capsys):
    version = register(registry, tmp_path, STUDENT)
    err = refusal(["--from", f"digits@{version}", "--config", "digits_cnn"], registry, capsys)
    assert (
        "--config digits_cnn builds digits_cnn with options {}; --from digits@1 (digits@1, "
        "digits_cnn) was built with {'channels': 16, 'hidden': 64}: leave out --config"
    ) in err


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("digits@9", "--from digits@9: Model 'digits' has no version 9."),
        ("digits@candidate", "--from digits@candidate: Model 'digits' has no version with alias"),
        ("nosuch@champion", "--from nosuch@champion: Model 'nosuch' has no version with alias"),
        ("../digits", "--from ../digits: Invalid model name '../digits'"),
    ],
)
def test_a_version_that_is_not_there_is_refused_in_one_line(
    registry, champion, ref, expected, capsys
):
    assert expected in refusal(["--from", ref], registry, capsys)


def test_a_version_without_weights_is_refused(registry, tmp_path, capsys):
    version = register(registry, tmp_path, {}, weights=False)
    err = refusal(["--from", f"digits@{version}"], registry, capsys)
    assert f"digits@{version} (digits_cnn) has no model.safetensors to start from" in err


def test_the_starting_version_is_a_flag_of_its_own_and_always_pinned(registry, champion, capsys):
    err = refusal(["--set", "init_from=digits@1"], registry, capsys)
    assert "--set init_from='digits@1': no such key" in err
    with pytest.raises(ValidationError, match="pin a version number"):
        TrainConfig(name="x", init_from="digits@champion")
    with pytest.raises(ValidationError, match="Invalid model name"):
        TrainConfig(name="x", init_from="a/b@1")


def test_a_run_name_that_cannot_name_a_folder_is_refused(registry, capsys):
    err = refusal(["--name", "my run"], registry, capsys)
    assert "--name 'my run': use 1-128 letters, digits, '.', '-' or '_'" in err


def test_the_preset_for_a_parent_matches_its_options_first():
    assert preset_for("gpt", {"preset": "tiny", "block_size": 128}) == "gpt_tiny"
    assert preset_for("gpt", {"preset": "1.3b", "activation_checkpointing": True}) == "gpt_1b3"
    assert preset_for("gpt", {"preset": "small"}) == "gpt_tiny"  # the architecture's first
    assert preset_for("digits_transformer", {}) == "digits_transformer"
    with pytest.raises(ValueError, match="no training preset trains architecture 'ensemble'"):
        preset_for("ensemble", {})


def _submitted(registry: Registry, cfg: TrainConfig) -> None:
    """What an earlier submission of ``cfg`` left: its MLflow run, named by its tag."""
    create_run(registry, cfg.register_as, cfg.name, cfg.to_dict(), {RUN_NAME_TAG: cfg.name})


def test_a_resubmitted_fine_tune_resumes_from_the_version_it_first_started_from(
    registry, tmp_path, champion
):
    first = parse(["--from", "digits@champion", "--name", "ft-resume"], registry)
    check_resume(registry, first)  # the first submission: nothing to compare with
    _submitted(registry, first)
    check_resume(registry, parse(["--from", "digits@champion", "--name", "ft-resume"], registry))

    # The champion moves on: the same command now names another parent than the weights in
    # the run's checkpoint came from.
    registry.set_alias("digits", CHAMPION, register(registry, tmp_path, {}))
    moved = parse(["--from", "digits@champion", "--name", "ft-resume"], registry)
    with pytest.raises(SystemExit, match=(
        r"run ft-resume fine-tunes digits@1 \(its first submission\); --from gives digits@2: "
        r"resubmit with --from digits@1 to resume it, or choose another --name"
    )):  # fmt: skip
        check_resume(registry, moved)
    check_resume(registry, parse(["--from", "digits@1", "--name", "ft-resume"], registry))


def test_a_run_from_fresh_weights_cannot_be_resumed_as_a_fine_tune(registry, champion):
    fresh = parse(["--name", "fresh-1"], registry)
    _submitted(registry, fresh)
    check_resume(registry, fresh)
    with pytest.raises(SystemExit, match="run fresh-1 trains from fresh weights .* no --from"):
        check_resume(registry, parse(["--from", "digits@1", "--name", "fresh-1"], registry))
