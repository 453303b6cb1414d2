"""Request bodies into typed values and model inputs, predictions into responses: each
refusal a 422 naming the field and the fix."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from models.exceptions import InvalidModelRef
from models.refs import check_name
from serve_apps._private.http import ApiError, validation_message
from serve_apps._private.prediction import Prediction
from serve_apps.schemas import PredictRequest, PredictResponse

Schema = TypeVar("Schema", bound=BaseModel)


def read_model(body: object, schema: type[Schema]) -> Schema:
    """``body`` (parsed JSON) as ``schema``, or 422 naming what is wrong."""
    try:
        return schema.model_validate(body)
    except ValidationError as err:
        raise ApiError(422, "invalid_input", validation_message(err)) from None


def checked_name(name: str) -> str:
    """``name`` if it can name a model (no path, no URL), else 422."""
    try:
        return check_name(name, "model name")
    except InvalidModelRef as err:
        raise ApiError(422, "invalid_model_name", str(err)) from None


def to_array(
    req: PredictRequest, name: str, input_shape: list[int], max_instances: int
) -> np.ndarray:
    """The instances as one float32 array of shape (n, *input_shape) for model ``name``, or
    422 saying why not."""
    if len(req.instances) > max_instances:
        raise ApiError(
            422,
            "invalid_input",
            f"{len(req.instances)} instances; at most {max_instances} per request.",
        )
    width = int(np.prod(input_shape))
    for i, instance in enumerate(req.instances):
        if len(instance) != width:
            raise ApiError(
                422,
                "invalid_input",
                f"instances[{i}] has {len(instance)} values; model {name!r} expects {width}.",
            )
    return np.asarray(req.instances, dtype=np.float32).reshape(-1, *input_shape)


def prediction_response(
    name: str, result: Prediction, rid: str | None, members: list[str] | None = None
) -> PredictResponse:
    return PredictResponse(
        model=name,
        version=result.version,
        predictions=result.probabilities.argmax(axis=1).tolist(),
        probabilities=result.probabilities.astype(np.float64).round(6).tolist(),
        request_id=rid,
        members=members,
    )
