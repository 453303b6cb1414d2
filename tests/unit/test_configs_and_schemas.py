from dataclasses import replace

import pytest
from pydantic import ValidationError

from jobs.configs import PRESETS, OverrideError, TrainConfig, preset
from serve_apps._private.http import validation_message
from serve_apps.schemas import PredictorConfig, PredictRequest


def test_every_preset_builds():
    for name in PRESETS:
        assert preset(name).zero_stage in (0, 1, 2, 3)


def test_overrides_are_cast_to_field_types():
    pairs = ["epochs=3", "lr=0.01", "cache_data=false", "use_gpu=yes", "augment=0"]
    cfg = preset("digits_cnn").with_overrides(pairs)
    assert (cfg.epochs, cfg.lr, cfg.cache_data, cfg.use_gpu, cfg.augment) == (
        3, 0.01, False, True, False
    )  # fmt: skip
    assert isinstance(cfg, TrainConfig) and cfg.name == "digits_cnn"


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (
            "use_gpu=ture",
            r"^use_gpu='ture': Input should be a valid boolean.*accepted: true, false",
        ),
        ("epochs=x", r"^epochs='x': Input should be a valid integer.*use a whole number"),
        ("lr=fast", r"^lr='fast': Input should be a valid number"),
        ("zero_stage=4", r"^zero_stage='4': Input should be less than or equal to 3$"),
        ("epochs", r"^'epochs': write KEY=VALUE, e.g. epochs=5$"),
        ("nosuch=1", r"^nosuch='1': no such key; use one of architecture, augment, batch_size,"),
        ("model_options=x", "model_options='x': no such key"),  # not a scalar
        ("name=x", "name='x': no such key"),  # a job's --name
    ],
)
def test_bad_overrides_name_the_key_the_value_and_the_fix(pair, message):
    with pytest.raises(OverrideError, match=message) as err:
        preset("digits_cnn").with_overrides([pair])
    assert "\n" not in str(err.value)


def test_an_override_that_breaks_a_check_across_fields_is_named():
    with pytest.raises(OverrideError, match="^zero_stage='0': offload_optimizer needs ZeRO >= 1"):
        preset("digits_cnn_offload").with_overrides(["zero_stage=0"])


def test_a_config_built_in_code_is_validated_too():
    with pytest.raises(ValidationError, match="epochs"):
        TrainConfig(name="x", epochs="many")
    with pytest.raises(ValidationError, match="Unknown architecture 'nope'"):
        TrainConfig(name="x", architecture="nope")
    with pytest.raises(ValidationError, match="num_workers"):
        replace(preset("digits_cnn"), num_workers=0)


def test_a_config_pickles_unchanged_as_ray_ships_it_to_workers():
    import cloudpickle

    from jobs._private.loop_config import LoopConfig

    loop = LoopConfig(
        train=preset("gpt_tiny"), steps_per_epoch=7, tracking_uri="sqlite:///x", artifact_root="y"
    )
    assert cloudpickle.loads(cloudpickle.dumps(loop)) == loop


def test_invalid_config_values_are_refused():
    with pytest.raises(ValueError, match="zero_stage"):
        TrainConfig(name="x", zero_stage=4)
    with pytest.raises(ValueError, match="Unknown config"):
        preset("nope")


@pytest.mark.parametrize(
    "instances",
    [
        [],
        [[float("nan")] * 64],
        [[float("inf")] * 64],
        [["1"] * 64],
        [[True] * 64],
        [[None] * 64],
        "not a list",
    ],
)
def test_predict_request_refuses_bad_instances(instances):
    with pytest.raises(ValidationError):
        PredictRequest.model_validate({"instances": instances})


def test_predict_request_accepts_ints_and_floats_and_refuses_extras():
    assert PredictRequest.model_validate({"instances": [[0, 1.5] * 32]}).instances[0][1] == 1.5
    with pytest.raises(ValidationError, match="extra"):
        PredictRequest.model_validate({"instances": [[0.0]], "extra": 1})


def test_validation_message_is_short_and_locates_the_problem():
    with pytest.raises(ValidationError) as err:
        PredictRequest.model_validate({"instances": [[1.0, float("nan")] + [1.0] * 62] * 5})
    message = validation_message(err.value)
    assert message.startswith("instances[0][1]: Input should be a finite number")
    assert "(and 2 more)" in message and "Traceback" not in message


def test_predictor_config_rejects_unknown_keys():
    with pytest.raises(ValidationError, match="max_batch"):
        PredictorConfig(max_batch=3)


def test_deepspeed_config_follows_the_preset():
    from jobs._private.deepspeed_setup import deepspeed_config

    zero2 = deepspeed_config(preset("digits_cnn"), world_size=2, bf16=False)
    assert zero2["zero_optimization"] == {"stage": 2} and "optimizer" not in zero2
    assert zero2["train_batch_size"] == 32 * 2 and zero2["gradient_clipping"] == 1.0
    lean = deepspeed_config(preset("digits_cnn_offload"), world_size=4, bf16=True)
    zero = lean["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    assert lean["train_batch_size"] == 32 * 2 * 4  # micro batch x accumulation x workers
    assert lean["optimizer"]["type"] == "AdamW" and lean["bf16"] == {"enabled": True}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"offload_optimizer": True, "zero_stage": 0}, "offload_optimizer"),
        ({"offload_params": True, "zero_stage": 2}, "offload_params"),
        ({"grad_accum": 0}, "grad_accum"),
    ],
)
def test_inconsistent_deepspeed_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(name="x", **overrides)
