"""Errors of releases. They survive pickling across actors and carry the model they concern."""

from __future__ import annotations


class ReleaseError(ValueError):
    """A release cannot start or change as asked (one already runs, none runs, the candidate
    is the champion or takes other shapes). A ValueError: callers treat it as a bad request.

    Args:
        message: What is wrong and the command that fixes it.
        model: The registered model the release is of.
    """

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message)
        self.model = model

    def __reduce__(self):  # keep `model` across pickling (Ray sends it to the caller)
        return (type(self), (str(self), self.model))
