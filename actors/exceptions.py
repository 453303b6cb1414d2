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


class ShardStoreError(RuntimeError):
    """A ShardStore shard could not be loaded or read.

    Args:
        message: What went wrong and what to do about it.
        shard_id: The shard (its file's stem, e.g. ``train-00001-of-00004``).
        node_id: The Ray node where it happened, or "" when not on one.
        datacenter: That node's datacenter (region label), or "" when unlabelled.
    """

    def __init__(self, message: str, shard_id: str, node_id: str = "", datacenter: str = ""):
        super().__init__(message)
        self.shard_id, self.node_id, self.datacenter = shard_id, node_id, datacenter

    def __reduce__(self):  # keep the context across pickling (actor -> caller)
        return (type(self), (str(self), self.shard_id, self.node_id, self.datacenter))


class ShardChecksumError(ShardStoreError):
    """A shard's bytes on storage do not match the SHA-256 in the dataset's manifest: the
    file changed or is corrupt. Re-run ``jobs.ingest`` for the dataset."""


class ShardNotHeld(ShardStoreError):
    """A replica was asked for a shard it does not hold (the group moved it): ask the
    coordinator for the shard's current replicas."""


class ShardUnavailable(ShardStoreError):
    """No replica of a shard answered, after every retry: all its replicas were lost at
    once (more nodes than the replication factor allows), or the group is gone."""


class PipelineError(RuntimeError):
    """A pipeline-stage group cannot do what was asked.

    Args:
        message: What went wrong and what fixes it.
        model: The registered model the group serves.
        version: Its version.
        stage: The stage concerned, as ``k/p`` (1-based), or ``""`` for the whole group.
    """

    def __init__(self, message: str, model: str, version: int | str, stage: str = "") -> None:
        super().__init__(message)
        self.model, self.version, self.stage = model, str(version), stage

    def __reduce__(self):  # keep the context across pickling (Ray re-raises it in the caller)
        return (type(self), (str(self), self.model, self.version, self.stage))


class StageOverBudget(PipelineError, ValueError):
    """A stage's slice of the weights is larger than its memory budget: split into more stages
    (``num_stages``) or raise ``stage_memory_bytes``."""


class InvalidSplit(PipelineError, ValueError):
    """A pipeline config does not fit the model (more stages than layers, bad split points)."""


class PipelineUnavailable(PipelineError):
    """The group failed and could not be brought back within the attempts allowed."""
