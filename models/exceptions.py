"""Errors of the model library. They survive pickling across actors and carry their context."""

from __future__ import annotations


class ModelError(Exception):
    """Base class; ``context`` names what the error is about (model, version, file)."""

    def __init__(self, message: str, **context: str) -> None:
        super().__init__(message)
        self.context = context

    def __reduce__(self):
        return (_rebuild, (type(self), str(self), self.context))


def _rebuild(cls: type[ModelError], message: str, context: dict[str, str]) -> ModelError:
    return cls(message, **context)


class InvalidModelRef(ModelError, ValueError):
    """A model reference (``name``, ``name@alias``, ``name@3``) is malformed or unsafe."""


class ModelNotFound(ModelError, LookupError):
    """No such registered model, version or alias."""


class ArtifactIntegrityError(ModelError):
    """An artifact's SHA-256 does not match what the registry recorded: refuse to load it."""


class ParityError(ModelError):
    """The ONNX export disagrees with the torch model beyond tolerance."""


class IncompatibleModel(ModelError, ValueError):
    """A version exists but cannot do what was asked, e.g. a classifier asked to generate."""


class CacheLost(ModelError):
    """The keys and values a cached forward needed are gone (a pipeline group restarted, or
    a stage dropped its least recently used cache): prefill the rows again from their tokens."""
