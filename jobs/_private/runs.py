"""The MLflow runs of jobs: created with their params and tags, FINISHED or FAILED at the end.

One helper for every job: train, compress and evaluate wrap their work in ``mlflow_run``;
tune creates its experiment's run and one nested run per trial with ``create_run`` (they
outlive a driver that dies, and ``reopen`` them on ``--resume``) and ends them with
``closing`` or ``close``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

from mlflow.entities import Param

from jobs._private.failures import report_failure
from models.registry import Registry

PARENT_TAG = "mlflow.parentRunId"
"""MLflow's own tag for a nested run: its UI shows the run under its parent."""

Status = Literal["FINISHED", "FAILED"]


def create_run(
    registry: Registry,
    experiment: str,
    run_name: str,
    params: dict,
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> str:
    """A new run in ``experiment`` (nested under ``parent_run_id`` if given) with
    ``params`` and ``tags``; its id."""
    tags = {**tags, PARENT_TAG: parent_run_id} if parent_run_id else tags
    run = registry.client.create_run(registry.experiment(experiment), run_name=run_name, tags=tags)
    # One request for every param: a trial's driver logs ~25 while others train.
    batch = [Param(key, str(value)) for key, value in params.items()]
    registry.client.log_batch(run.info.run_id, params=batch)
    return run.info.run_id


def close(registry: Registry, run_id: str, status: Status) -> None:
    registry.client.set_terminated(run_id, status=status)


def reopen(registry: Registry, run_id: str) -> None:
    """Mark a run that continues (a resumed experiment, or its trial) RUNNING again."""
    registry.client.update_run(run_id, status="RUNNING")


@contextlib.contextmanager
def closing(registry: Registry, run_id: str) -> Iterator[str]:
    """Yield ``run_id``; the run is FINISHED when the body returns, FAILED if it raises
    (a KeyboardInterrupt or SystemExit too), and then counted for the alerts."""
    try:
        yield run_id
    except BaseException:
        close(registry, run_id, "FAILED")
        report_failure(registry, run_id)
        raise
    close(registry, run_id, "FINISHED")


@contextlib.contextmanager
def mlflow_run(
    registry: Registry, experiment: str, run_name: str, params: dict, tags: dict[str, str]
) -> Iterator[str]:
    """Yield the id of a new run in ``experiment``, closed as ``closing`` says."""
    with closing(registry, create_run(registry, experiment, run_name, params, tags)) as run_id:
        yield run_id
