"""HTTP plumbing of the gateway: typed errors, request ids and a capped, strict body reader."""

from __future__ import annotations

import json
import re
import sys
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_MAX_DETAIL_CHARS = 300  # a detail may quote the request (a key, a field's path)
_MAX_QUOTED_KEY_CHARS = 40


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


OIP_PREFIX = "/v2"  # the Open Inference Protocol's routes (serve_apps._private.oip)
COMPLETIONS, CHAT_COMPLETIONS = "/v1/completions", "/v1/chat/completions"  # OpenAI's
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


def error_response(err: ApiError, rid: str | None, path: str = "") -> JSONResponse:
    """The error answer: ours, or the protocol's on its routes (their clients read the
    message there): the Open Inference Protocol's ``{"error": "..."}``, OpenAI's
    ``{"error": {"message", "type", "param", "code"}}``."""
    detail, status = _safe_detail(err.detail), err.status
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        body: dict = {"error": detail}
    elif path in (COMPLETIONS, CHAT_COMPLETIONS):
        status = 400 if status == 422 else status  # OpenAI answers every bad request 400
        kind = _OPENAI_TYPES.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )
        body = {"error": {"message": detail, "type": kind, "param": None, "code": err.code}}
    else:
        body = {"error": err.code, "detail": detail, "request_id": rid}
    # X-Request-ID is added by the gateway's middleware.
    return JSONResponse(body, status_code=status, headers=err.headers)


def _safe_detail(detail: str) -> str:
    """Short, and encodable: a lone surrogate (JSON's "\\ud800") quoted from a request has
    no UTF-8 form, and JSONResponse would fail to render the error (a 500 instead)."""
    if len(detail) > _MAX_DETAIL_CHARS:
        detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
    return detail.encode("utf-8", "backslashreplace").decode("utf-8")


async def read_json_body(request: Request, cap: int) -> object:
    """The request's JSON body, refused early when too large, mistyped or malformed.

    413 when the body exceeds ``cap`` bytes, whether or not Content-Length is sent (a
    chunked body is counted as it arrives); 415 unless the content type is JSON; 422 for
    an empty body; 400 for malformed JSON (see ``parse_json``).
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    body = await read_body(request, cap)
    if not body.strip():
        raise ApiError(422, "invalid_input", 'Empty body: send {"instances": [[...], ...]}.')
    return parse_json(body)


async def read_body(request: Request, cap: int) -> bytearray:
    """The request's body as sent, at most ``cap`` bytes (413 past it, counted as chunks
    arrive when no Content-Length is given); 415 for a compressed body (its expanded size
    could not be capped before expanding it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ApiError(413, "body_too_large", f"Request body exceeds {cap} bytes.")
    if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
        raise ApiError(415, "unsupported_media_type", "Send the body uncompressed.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise ApiError(413, "body_too_large", f"Request body exceeds {cap} bytes.")
    return body


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object's members, refusing a key given twice. Python's json keeps the last one,
    other parsers (a proxy, a WAF, a client library) the first: two readers of the same
    body would disagree on what it says."""
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return members


def parse_json(body: bytes | bytearray) -> object:
    """``body`` as JSON, or a 400 naming what the parser refused: a syntax error, bytes
    that are not UTF-8, a key given twice in one object, nesting deeper than Python's
    recursion limit, an integer longer than ``sys.get_int_max_str_digits()`` digits.

    Values the parser takes are left to the schemas: ``1e999`` reads as infinity and
    ``NaN`` as NaN (both refused with a 422 where a finite number is expected), and a
    string may hold a lone surrogate (``"\\ud800"``: pydantic refuses it in ``str``
    fields). Checking those here would walk every value of every body.
    """
    try:
        # One hook call per JSON object: one per request for the gateway's bodies.
        return json.loads(body, object_pairs_hook=_unique_keys)
    except RecursionError:
        detail = "nested too deeply"
    except _DuplicateKey as err:
        detail = f"duplicate key {_quoted(err.key)}; send each key once"
    except UnicodeDecodeError:
        detail = "not UTF-8 text"
    except json.JSONDecodeError as err:
        detail = str(err)
    except ValueError:  # int(): the digits limit against quadratic-time conversions
        detail = f"an integer of more than {sys.get_int_max_str_digits()} digits"
    raise ApiError(400, "malformed_json", f"Malformed JSON: {detail}.")


def _quoted(key: str) -> str:
    if len(key) > _MAX_QUOTED_KEY_CHARS:
        return repr(key[:_MAX_QUOTED_KEY_CHARS]) + "..."
    return repr(key)  # repr escapes what is not printable, lone surrogates included


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
