"""Command-line parsing shared by the job entrypoints: flags from a pydantic model."""

from __future__ import annotations

import argparse
from typing import TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)


def parse_config(model: type[T], description: str, argv: list[str] | None) -> T:
    """Build ``model`` from ``--flag value`` arguments, one per field.

    A bad value exits with status 2 and one line per problem naming the flag, the value
    and what is allowed, instead of a traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    for name, field in model.model_fields.items():
        parser.add_argument(f"--{_flag(name)}", dest=name, help=field.description)
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return model(**args)
    except ValidationError as err:
        problems = "; ".join(
            f"--{_flag(str(e['loc'][0]))} {e.get('input')!r}: {e['msg']}" for e in err.errors()
        )
        parser.error(problems)


def _flag(field: str) -> str:
    """``from_`` -> ``from`` (a keyword as a field name), ``max_batch`` -> ``max-batch``."""
    return field.rstrip("_").replace("_", "-")
