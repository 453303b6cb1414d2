import pytest
from pydantic import ValidationError

from jobs.configs import PRESETS, TrainConfig, preset
from serve_apps._private.http import validation_message
from serve_apps.schemas import PredictorConfig, PredictRequest


def test_every_preset_builds():
    for name in PRESETS:
        assert preset(name).zero_stage in (0, 1, 2, 3)


def test_overrides_are_cast_to_field_types():
    cfg = preset("digits_cnn").with_overrides(["epochs=3", "lr=0.01", "cache_data=false"])
    assert (cfg.epochs, cfg.lr, cfg.cache_data) == (3, 0.01, False)


@pytest.mark.parametrize("pair", ["epochs", "nosuch=1", "model_options=x"])
def test_bad_overrides_name_the_fix(pair):
    with pytest.raises(ValueError, match="key=value"):
        preset("digits_cnn").with_overrides([pair])


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
