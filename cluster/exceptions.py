"""Errors of the cluster layer. Each carries enough context to act on without a traceback."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The local cluster could not be started, reached or stopped.

    Args:
        message: What went wrong and how to fix it.
        address: The address that was tried, when one was.
    """

    def __init__(self, message: str, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address

    def __reduce__(self):  # keep `address` across pickling (actors, jobs)
        return (type(self), (str(self), self.address))
