"""Command-line parsing shared by the job entrypoints: flags validated by pydantic.

Every job's flags end in a typed config: a pydantic model (``parse_config``, ``validate``)
or a training preset with ``--set key=value`` overrides (``add_preset_flags``,
``preset_config``). A bad value exits with status 2 and one line naming the flag, the
value and what is accepted, never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from jobs.configs import PRESETS, OverrideError, TrainConfig, preset
from jobs.configs.validation import one_line

T = TypeVar("T", bound=BaseModel)


class JobParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``<prog>: error: <message>``, with exit status 2
    (argparse's own print the usage first, which for a job is longer than the message)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_config(model: type[T], description: str, argv: list[str] | None) -> T:
    """Build ``model`` from ``--flag value`` arguments, one per field."""
    parser = JobParser(description=description)
    add_model_flags(parser, model)
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return validate(parser, model, args)


def add_model_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], only: Iterable[str] | None = None
) -> None:
    """A ``--flag`` per field of ``model`` (or per field in ``only``), its description as
    the help. Values stay strings: pydantic casts and checks them (``validate``)."""
    for name, field in model.model_fields.items():
        if only is None or name in only:
            parser.add_argument(f"--{_flag(name)}", dest=name, help=field.description)


def validate(
    parser: argparse.ArgumentParser,
    model: type[T],
    values: dict,
    flags: dict[str, str] | None = None,
) -> T:
    """``model(**values)``, or exit 2 with one line per problem naming its flag (``--name``
    of the field, or ``flags[field]``), the value given and what is allowed."""
    flags = flags or {}

    def where(loc: tuple, value) -> str:
        flag = flags.get(str(loc[0]), f"--{_flag(str(loc[0]))}")
        if len(loc) == 1:
            return f"{flag} {value!r}"
        if len(loc) == 2:  # a KEY=VALUE flag's entry (--space lr=...), as given
            return f"{flag} {loc[1]}={value}"
        return f"{flag} {loc[1]}: {'.'.join(map(str, loc[2:]))} {value!r}"  # inside the value

    try:
        return model(**values)
    except ValidationError as err:
        parser.error(one_line(err, where))


def add_preset_flags(
    parser: argparse.ArgumentParser, default: str | None, default_help: str | None = None
) -> None:
    """``--config`` (a training preset) and ``--set KEY=VALUE`` (repeated) overrides.

    ``default_help`` says what the default is where it is not one preset (None: ``default``).
    """
    keys = ", ".join(sorted(preset("digits_cnn").settable()))
    default_help = default_help or default
    parser.add_argument(
        "--config",
        default=default,
        choices=sorted(PRESETS),
        help=f"training preset (default: {default_help})" if default_help else "training preset",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a field of the preset, e.g. --set epochs=5; keys: {keys}",
    )


def preset_config(parser: argparse.ArgumentParser, name: str, pairs: Iterable[str]) -> TrainConfig:
    """Preset ``name`` with the ``--set`` ``pairs``; a bad pair exits 2 with one line."""
    try:
        return preset(name).with_overrides(pairs)
    except OverrideError as err:
        parser.error(f"--set {err}")


def _flag(field: str) -> str:
    """``from_`` -> ``from`` (a keyword as a field name), ``max_batch`` -> ``max-batch``."""
    return field.rstrip("_").replace("_", "-")
