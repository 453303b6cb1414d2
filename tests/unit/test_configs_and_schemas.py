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
