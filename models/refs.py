"""Names and references of registered models, free of MLflow (the gateway imports them).

References are ``name``, ``name@alias`` or ``name@<version>``; names are checked before
anything touches a path or a URL. Aliases (``champion`` serves, ``candidate`` is next) are
the source of truth for what serves. Lineage lives in version tags named here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from models.exceptions import InvalidModelRef

CHAMPION = "champion"
"""The alias that serves."""
CANDIDATE = "candidate"
"""The alias of the version a release would serve next."""
MANIFEST_TAG = "aimass.manifest_sha256"
PARENT_TAG = "aimass.parent"
EXPORT_TAG = "aimass.export.{format}"
"""Where a version's export in another format is (an artifact URI), and its manifest's
SHA-256 (the same tag with ``.sha256``)."""
DATA_TAG = "aimass.data_manifest_sha256"
GIT_TAG = "aimass.git_sha"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed reference to a model version: by alias, by number, or ``champion`` by default."""

    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, at, selector = text.partition("@")
        check_name(name, "model name")
        if not at:
            return cls(name, alias=CHAMPION)
        if selector.isdigit():
            return cls(name, version=int(selector))
        check_name(selector, "alias")
        return cls(name, alias=selector)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias if self.alias else self.version}"


def check_name(value: str, what: str = "name") -> str:
    """Accept letters, digits, '-' and '_' only: no paths, URLs or traversal can pass."""
    if not _NAME.fullmatch(value or ""):
        raise InvalidModelRef(
            f"Invalid {what} {value!r}: use 1-64 letters, digits, '-' or '_', starting "
            "with a letter.",
            value=str(value),
        )
    return value


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    name: str
    version: int
    source: str
    run_id: str | None
    manifest_sha256: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    parent: str | None = None
    """The version this one was derived from, as ``name@version``; None for a fresh model."""


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """A registered model at a glance: its newest version and where its aliases point."""

    name: str
    latest_version: int | None
    aliases: dict[str, int]
