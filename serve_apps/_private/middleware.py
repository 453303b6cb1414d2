"""The gateway app's request ids, metrics and error answers: every failure leaves as the
JSON error shape ``{"error", "detail", "request_id"}`` (the Open Inference Protocol's
``{"error"}`` on its routes), never as a traceback."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from actors.exceptions import ActorUnavailable
from serve_apps._private.datacenters import SERVED_HEADER
from serve_apps._private.http import (
    OIP_PREFIX,
    ApiError,
    error_response,
    request_id,
    validation_message,
)
from serve_apps._private.metrics import gateway_metrics

logger = logging.getLogger("ray.serve")
_OBSERVED = ("/v1/", f"{OIP_PREFIX}/models/")  # the model routes: on the metrics


class Observed:
    """Request ids, the last line of defence and metrics, as plain ASGI middleware.

    Serve's proxy gives every request an X-Request-ID (the client's, or a new one) and
    echoes it on the response; errors quote the same id in their body. (Starlette's
    ``@app.middleware("http")`` did this at a quarter of the gateway's CPU per request.)
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)  # its state is the scope's: handlers see the same
        rid = request.state.request_id = request_id(request)
        start, status = time.perf_counter(), [500, 0.0]

        async def observed_send(message) -> None:
            if message["type"] == "http.response.start":
                status[:] = message["status"], time.perf_counter() - start
                region = getattr(request.state, "region", None)
                if region:  # where the model answered (set by the route that called it)
                    message["headers"] = [*message.get("headers", []), _served(region)]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:  # no traceback ever reaches the client
            logger.exception("unhandled error in request %s", rid)
            request.state.error = "internal"
            if not status[1]:  # nothing sent yet: answer with a clean 500
                err = ApiError(500, "internal", "Internal error.")
                response = error_response(err, rid, scope["path"])
                await response(scope, receive, observed_send)
        if scope["path"].startswith(_OBSERVED):
            gateway_metrics().observe(request, status[0], status[1])


def _served(region: str) -> tuple[bytes, bytes]:
    return SERVED_HEADER.lower().encode(), region.encode()


def add_error_handlers(app: FastAPI) -> None:
    """Answer ApiError, an unreachable release controller, Starlette's own 404/405 and
    FastAPI's parameter validation in the one error shape (the code goes on the metrics)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ActorUnavailable, _actor_unavailable)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


def _answer(request: Request, err: ApiError) -> JSONResponse:
    request.state.error = err.code
    return error_response(err, getattr(request.state, "request_id", None), request.scope["path"])


async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return _answer(request, err)


async def _actor_unavailable(request: Request, err: ActorUnavailable) -> JSONResponse:
    logger.warning("%s", err)
    return _answer(
        request, ApiError(503, "routing_unavailable", "Try again shortly.", {"Retry-After": "1"})
    )


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return _answer(request, ApiError(err.status_code, code, str(err.detail)))


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    detail = validation_message(ValidationError.from_exception_data("request", err.errors()))
    return _answer(request, ApiError(422, "invalid_input", detail))
