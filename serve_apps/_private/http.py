"""HTTP plumbing of the gateway: typed errors, request ids and a capped body reader."""

from __future__ import annotations

import json
import re
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ApiError(Exception):
    """An answer other than 2xx, with a code and a message safe to show the client."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def request_id(request: Request) -> str:
    """The client's X-Request-ID when it is safe to echo, else a new one."""
    return safe_request_id(request.headers.get(REQUEST_ID_HEADER, ""))


def safe_request_id(given: str) -> str:
    """``given`` when it is safe to echo and log (a short id of plain characters), else a
    new id."""
    return given if _SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def error_response(err: ApiError, rid: str | None) -> JSONResponse:
    return JSONResponse(
        {"error": err.code, "detail": err.detail, "request_id": rid},
        status_code=err.status,
        headers=err.headers,  # X-Request-ID is added by the gateway's middleware
    )


async def read_json_body(request: Request, cap: int) -> object:
    """The request's JSON body, refused early when too large, mistyped or malformed.

    413 when the body exceeds ``cap`` bytes, whether or not Content-Length is sent (a
    chunked body is counted as it arrives); 415 unless the content type is JSON; 422 for
    an empty body; 400 for malformed JSON.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ApiError(413, "body_too_large", f"Request body exceeds {cap} bytes.")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise ApiError(413, "body_too_large", f"Request body exceeds {cap} bytes.")
    if not body.strip():
        raise ApiError(422, "invalid_input", 'Empty body: send {"instances": [[...], ...]}.')
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, "malformed_json", f"Malformed JSON: {err}.") from None


def validation_message(err: ValidationError, limit: int = 3) -> str:
    """A short, safe summary of pydantic errors: where, and what was expected."""
    parts = []
    for e in err.errors()[:limit]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        parts.append(f"{where or 'body'}: {e['msg']}")
    more = len(err.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def safe_header(request: Request, name: str) -> str | None:
    """A header value usable as an identifier (same alphabet as request ids), else None."""
    value = request.headers.get(name, "")
    return value if _SAFE_REQUEST_ID.fullmatch(value) else None
