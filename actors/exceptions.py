"""Errors of the actors layer. They survive pickling across actors and carry their context."""

from __future__ import annotations


class ActorUnavailable(RuntimeError):
    """A long-lived actor could not be reached in time (it may be restarting).

    Args:
        message: What could not be done.
        actor: The actor's name.
    """

    def __init__(self, message: str, actor: str) -> None:
        super().__init__(message)
        self.actor = actor

    def __reduce__(self):  # keep `actor` across pickling
        return (type(self), (str(self), self.actor))
