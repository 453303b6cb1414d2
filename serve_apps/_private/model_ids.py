"""Serve's multiplexed model ids for registry versions: ``"name:version"``.

Ids name version numbers, never aliases: a replica caches a loaded id, so an id must mean
the same weights for as long as it is cached (aliases move; versions do not).
"""

from __future__ import annotations

import re

from models.exceptions import InvalidModelRef
from models.refs import check_name

_MODEL_ID = re.compile(r"(?P<name>[^:]+):(?P<version>[1-9][0-9]{0,8})")


def model_id(name: str, version: int) -> str:
    """The multiplexed model id of a version: ``"digits:3"``."""
    return f"{name}:{version}"


def parse_model_id(value: str) -> tuple[str, int]:
    """``"digits:3"`` -> ``("digits", 3)``; InvalidModelRef for anything else."""
    match = _MODEL_ID.fullmatch(value)
    if match is None:
        raise InvalidModelRef(
            f"Model id {value!r} is not 'name:version' (e.g. 'digits:3').", value=value
        )
    return check_name(match["name"], "model name"), int(match["version"])
