"""The gateway's body reader (RELIABILITY B2, B3, B9): size caps, content type, and the
JSON parser's limits as clean 4xx, never an exception that would become a 500 (no
cluster: a Starlette request fed by hand)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from serve_apps._private.http import ApiError, parse_json, read_json_body
from serve_apps.schemas import FeedbackRequest, GenerateRequest, PredictRequest

CAP = 4096


def _request(body: bytes, content_type: str | None = "application/json", sized=True) -> Request:
    """A POST whose body arrives in 1 KiB chunks, with Content-Length unless ``sized`` is
    False (as a chunked upload sends it)."""
    headers = [(b"content-type", content_type.encode())] if content_type else []
    if sized:
        headers.append((b"content-length", str(len(body)).encode()))
    chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict:
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def _read(body: bytes, **options) -> object:
    return asyncio.run(read_json_body(_request(body, **options), CAP))


def _refusal(body: bytes, **options) -> ApiError:
    with pytest.raises(ApiError) as err:
        _read(body, **options)
    assert len(err.value.detail) < 200 and "Traceback" not in err.value.detail
    return err.value


@pytest.mark.parametrize("sized", [True, False])
def test_a_body_over_the_cap_is_413_with_or_without_content_length(sized):
    body = b'{"a": "' + b"x" * CAP + b'"}'
    assert _refusal(body, sized=sized).status == 413


def test_a_body_exactly_at_the_cap_is_read():
    body = b'{"a": "' + b"x" * (CAP - 9) + b'"}'
    assert len(body) == CAP and _read(body) == {"a": "x" * (CAP - 9)}


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/jsonx"])
def test_a_body_not_sent_as_json_is_415(content_type):
    assert _refusal(b"{}", content_type=content_type).status == 415


def test_json_with_parameters_is_json():
    assert _read(b"{}", content_type="Application/JSON; charset=utf-8") == {}


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_an_empty_body_is_422(body):
    assert _refusal(body).status == 422


# B9: what Python's json refuses, or cannot survive, as 400 malformed_json.
MALFORMED = [
    ("syntax", b'{"instances": [[1, 2', "Expecting"),
    ("not UTF-8", b'{"a": "\xff"}', "UTF-8"),
    ("nested thousands deep", b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ("deep objects", b'{"a":' * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
    ("an integer past the digits limit", b'{"seed": 1' + b"0" * 5000 + b"}", "4300 digits"),
    ("a duplicate key", b'{"instances": [[1]], "instances": [[2]]}', "'instances'"),
    ("a nested duplicate key", b'[{"a": 1, "b": {"c": 1, "c": 2}}]', "'c'"),
    ("a duplicate lone surrogate key", b'{"\\ud800": 1, "\\ud800": 2}', "\\ud800"),
]


@pytest.mark.parametrize(("case", "body", "says"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_what_the_parser_refuses_is_400_with_a_short_message(case, body, says):
    err = _refusal(body) if len(body) <= CAP else _parse_refusal(body)
    assert (err.status, err.code) == (400, "malformed_json"), case
    assert says in err.detail, err.detail


def _parse_refusal(body: bytes) -> ApiError:
    with pytest.raises(ApiError) as err:
        parse_json(body)
    return err.value


def test_the_recursion_limit_is_not_left_exhausted():
    """After a RecursionError the replica parses (and recurses) as before."""
    _parse_refusal(b"[" * 100_000)
    assert parse_json(b"[" * 100 + b"]" * 100) is not None
    assert json.loads(json.dumps(list(range(10)))) == list(range(10))
    assert sys.getrecursionlimit() >= 1000


def test_the_longest_integer_allowed_parses():
    digits = sys.get_int_max_str_digits()
    assert parse_json(b"1" * digits) == int("1" * digits)


# Values the parser takes: the schemas refuse them (422), as the routes answer.
def _schema_refuses(schema, raw: bytes) -> str:
    with pytest.raises(ValidationError) as err:
        schema.model_validate(parse_json(raw))
    return str(err.value)


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"NaN", b"Infinity"])
def test_huge_exponents_and_nan_are_refused_where_finite_numbers_are_expected(number):
    row = b",".join([number] * 4)
    _schema_refuses(PredictRequest, b'{"instances": [[' + row + b"]]}")
    _schema_refuses(GenerateRequest, b'{"prompt": "a", "temperature": ' + number + b"}")
    _schema_refuses(FeedbackRequest, b'{"request_id": "r", "labels": [' + number + b"]}")


def test_a_huge_integer_under_the_digits_limit_is_refused_by_the_schemas():
    big = b"1" + b"0" * 4000
    _schema_refuses(PredictRequest, b'{"instances": [[' + big + b"]]}")
    _schema_refuses(GenerateRequest, b'{"prompt": "a", "seed": ' + big + b"}")


@pytest.mark.parametrize(
    "surrogate",
    [b"\\ud800", b"\\udfff", b"a\\ud83d", b"\xed\xa0\x80"],  # escaped, or raw (surrogatepass)
)
def test_lone_surrogates_are_refused_before_any_utf8_encode(surrogate):
    """A prompt with one would reach the Generator's UTF-8 tokenizer, which raises."""
    text = b'"' + surrogate + b'"'
    assert "unicode" in _schema_refuses(GenerateRequest, b'{"prompt": ' + text + b"}")
    _schema_refuses(FeedbackRequest, b'{"request_id": ' + text + b', "labels": [1]}')
    _schema_refuses(PredictRequest, b'{"instances": [[' + text + b"]]}")
    _schema_refuses(PredictRequest, b'{"instances": [[1]], ' + text + b": 1}")


def test_a_surrogate_pair_is_a_character():
    assert (
        GenerateRequest.model_validate(parse_json(b'{"prompt": "\\ud83d\\ude00"}')).prompt == "😀"
    )
