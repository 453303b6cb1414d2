"""How failures that reach the gateway from a replica become HTTP answers (no cluster)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from ray.exceptions import RayTaskError

from models.exceptions import IncompatibleModel, ModelNotFound
from serve_apps.gateway import _generation_error
from serve_apps.schemas import GenerateRequest


def _from_replica(err: Exception) -> Exception:
    """What the gateway catches when a replica raised ``err`` (Ray's wrapping)."""
    try:
        raise err
    except Exception as raised:
        return RayTaskError("generate", "traceback", raised).as_instanceof_cause()


def _invalid() -> ValidationError:
    try:
        GenerateRequest.model_validate({"prompt": ""})
    except ValidationError as err:
        return err
    raise AssertionError("an empty prompt must be refused")


@pytest.mark.parametrize(
    ("cause", "status", "code"),
    [
        (_invalid(), 422, "invalid_input"),
        (IncompatibleModel("digits:1 is not a language model"), 422, "invalid_model"),
        (ModelNotFound("no version 9", model="gpt"), 404, "model_not_found"),
        (RuntimeError("boom"), 503, "model_unavailable"),
    ],
)
def test_replica_failures_map_to_a_clear_status(cause, status, code):
    for err in (cause, _from_replica(cause)):
        answer = _generation_error(err)
        assert (answer.status, answer.code) == (status, code)
    assert "boom" not in _generation_error(_from_replica(RuntimeError("boom"))).detail


def test_a_timeout_before_the_first_piece_is_a_504():
    assert _generation_error(TimeoutError()).status == 504
