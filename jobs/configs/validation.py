"""Validation errors as one line a person can act on: where, the value given, the fix.

Pydantic's own text is several lines per problem, ends in a URL and, for a model-level
check, repeats every argument. Jobs print these lines instead, on the command line
(``jobs._private.cli``) and for ``--set`` overrides (``TrainConfig.with_overrides``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

# The words pydantic accepts for a boolean (any case): "ture" is a typo, not False.
BOOLEANS = "true, false, yes, no, on, off, 1, 0"

HINTS = {
    "bool_parsing": f"accepted: {BOOLEANS}",
    "int_parsing": "use a whole number, e.g. 5",
    "int_from_float": "use a whole number, e.g. 5",
    "float_parsing": "use a number, e.g. 0.01 or 1e-3",
}


class OverrideError(ValueError):
    """A ``key=value`` override that cannot apply; the message names the key, the value
    and the fix on one line."""


def problem(error: Any) -> str:
    """What one of ``ValidationError.errors()`` says is wrong, and how to fix it."""
    if error["type"] == "value_error":  # our own checks: their message, not pydantic's prefix
        return str(error["ctx"]["error"])
    hint = HINTS.get(error["type"])
    return f"{error['msg']} ({hint})" if hint else error["msg"]


def one_line(err: ValidationError, where: Callable[[tuple, Any], str]) -> str:
    """Every problem in ``err``, ``; ``-joined. ``where(loc, value)`` names a field's
    problem (a flag and its value, say); a model-level check's message stands alone."""
    return "; ".join(
        f"{where(e['loc'], e.get('input'))}: {problem(e)}" if e["loc"] else problem(e)
        for e in err.errors(include_url=False)
    )


def split_overrides(pairs: Iterable[str], keys: Iterable[str]) -> dict[str, str]:
    """``["epochs=5", ...]`` as ``{"epochs": "5"}``; a pair that is not ``KEY=VALUE`` with
    ``KEY`` in ``keys`` raises ``OverrideError`` naming the keys there are."""
    keys = sorted(keys)
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise OverrideError(f"{pair!r}: write KEY=VALUE, e.g. epochs=5")
        if key not in keys:
            raise OverrideError(f"{key}={value!r}: no such key; use one of {', '.join(keys)}")
        out[key] = value
    return out
