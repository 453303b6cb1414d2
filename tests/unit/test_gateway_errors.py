"""How failures that reach the gateway from upstream (model replicas, the release
controller) become HTTP answers, and how every error renders (no cluster)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from ray.exceptions import ActorDiedError, GetTimeoutError, RayTaskError
from ray.serve.exceptions import BackPressureError

from models.exceptions import IncompatibleModel, InvalidModelRef, ModelNotFound
from serve_apps._private.http import ApiError, error_response
from serve_apps._private.upstream import feedback_error, upstream_error
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
        (TimeoutError(), 504, "upstream_timeout"),
        (GetTimeoutError("ray.get timed out"), 504, "upstream_timeout"),
        (BackPressureError(num_queued_requests=64, max_queued_requests=64), 503, "overloaded"),
        (ModelNotFound("no version 9", model="digits"), 404, "model_not_found"),
        (_invalid(), 422, "invalid_input"),
        (IncompatibleModel("digits:1 is not a language model"), 422, "invalid_model"),
        (InvalidModelRef("'../x' is not a model name", value="../x"), 422, "invalid_model"),
        (ActorDiedError(), 503, "model_unavailable"),
        (RuntimeError("boom"), 503, "model_unavailable"),
    ],
)
def test_upstream_failures_map_to_one_clear_status(cause, status, code):
    for err in (cause, _from_replica(cause)):  # raised here, or in a replica
        answer = upstream_error(err)
        assert (answer.status, answer.code) == (status, code), repr(err)
        if status == 503:  # the next try may well succeed: say when
            assert answer.headers == {"Retry-After": "1"}


def test_an_unknown_failure_tells_the_client_nothing_of_it():
    answer = upstream_error(_from_replica(RuntimeError("secret /path in a traceback")))
    assert "secret" not in answer.detail and "Traceback" not in answer.detail


def test_each_error_has_headers_of_its_own():
    first, second = upstream_error(RuntimeError()), upstream_error(RuntimeError())
    first.headers["X-Extra"] = "1"
    assert second.headers == {"Retry-After": "1"}


@pytest.mark.parametrize(
    ("cause", "status", "code"),
    [
        (KeyError("rid"), 404, "unknown_request"),
        (ValueError("2 labels for a request of 3 instances."), 422, "invalid_input"),
        (TimeoutError(), 504, "upstream_timeout"),
        (ActorDiedError(), 503, "release_controller_unavailable"),
    ],
)
def test_feedback_refusals_and_failures(cause, status, code):
    for err in (cause, _from_replica(cause)):
        answer = feedback_error(err, "digits")
        assert (answer.status, answer.code) == (status, code), repr(err)


def _rendered(detail: str) -> dict:
    response = error_response(ApiError(422, "invalid_input", detail), "rid-1")
    return json.loads(response.body)


def test_an_error_quoting_a_lone_surrogate_still_renders():
    """A detail may quote the request; "\\ud800" has no UTF-8 form (rendering raised: 500)."""
    body = _rendered("key '\ud800' is not allowed")
    assert body["detail"] == "key '\\ud800' is not allowed" and body["request_id"] == "rid-1"


def test_an_error_detail_stays_short():
    assert len(_rendered("x" * 100_000)["detail"]) <= 300
