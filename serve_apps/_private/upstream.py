"""One map from what a call to an upstream (a model replica, the release controller) raised
to the HTTP error the client gets: timeouts 504, overload 503 with ``Retry-After``, unknown
versions 404, refused inputs or models 422, any other failure 503 with ``Retry-After``
(never a 500, never a traceback: the failure is logged here)."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError

from models.exceptions import IncompatibleModel, InvalidModelRef, ModelNotFound
from serve_apps._private.http import ApiError, validation_message

logger = logging.getLogger("ray.serve")


def cause_of(err: BaseException) -> BaseException:
    """What the replica raised. Ray re-raises it as a RayTaskError, which cannot always
    also subclass the original type (pydantic's ValidationError cannot be subclassed)."""
    if isinstance(err, RayTaskError) and err.cause is not None:
        return err.cause
    return err


def upstream_error(err: Exception, upstream: str = "model") -> ApiError:
    """The HTTP error for ``err``, raised by a call to ``upstream``.

    Args:
        err: What the call raised (a RayTaskError is judged by its cause).
        upstream: Who was called, as a code word: names the 503's code
            (``model_unavailable``) and message.
    """
    cause = cause_of(err)
    # TimeoutError covers asyncio.wait_for's and Ray's GetTimeoutError.
    if isinstance(cause, TimeoutError):
        return ApiError(504, "upstream_timeout", f"The {_words(upstream)} did not answer in time.")
    if isinstance(cause, BackPressureError):
        return ApiError(503, "overloaded", "Too many requests in flight.", _retry_soon())
    if isinstance(cause, ModelNotFound):
        return ApiError(404, "model_not_found", str(cause))
    if isinstance(cause, ValidationError):  # the replica checked the input with its limits
        return ApiError(422, "invalid_input", validation_message(cause))
    if isinstance(cause, (InvalidModelRef, IncompatibleModel)):
        return ApiError(422, "invalid_model", str(cause))
    # A replica that died, a failed run, a bug upstream: not the client's fault, and the
    # next try may land on a healthy replica.
    logger.warning("%s failed: %r", _words(upstream), cause)
    return ApiError(
        503,
        f"{upstream}_unavailable",
        f"The {_words(upstream)} failed to answer; try again shortly.",
        _retry_soon(),
    )


def _words(upstream: str) -> str:
    return upstream.replace("_", " ")


def _retry_soon() -> dict[str, str]:
    return {"Retry-After": "1"}  # a new dict each time: an error's headers are its own


def feedback_error(err: Exception, name: str) -> ApiError:
    """The release controller's refusals of feedback on ``name``, else ``upstream_error``."""
    cause = cause_of(err)
    if isinstance(cause, KeyError):
        return ApiError(
            404, "unknown_request", f"No recent prediction of {name!r} has that request id."
        )
    if isinstance(cause, ValueError):  # labels that do not fit the request's instances
        return ApiError(422, "invalid_input", str(cause))
    return upstream_error(err, "release_controller")
