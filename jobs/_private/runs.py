"""An MLflow run around a job: created at the start, FINISHED or FAILED at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from models.registry import Registry


@contextlib.contextmanager
def mlflow_run(
    registry: Registry, experiment: str, run_name: str, params: dict, tags: dict[str, str]
) -> Iterator[str]:
    """Yield the id of a new run in ``experiment``; mark it FAILED if the body raises."""
    run = registry.client.create_run(registry.experiment(experiment), run_name=run_name, tags=tags)
    run_id = run.info.run_id
    for key, value in params.items():
        registry.client.log_param(run_id, key, value)
    try:
        yield run_id
    except BaseException:
        registry.client.set_terminated(run_id, status="FAILED")
        raise
    registry.client.set_terminated(run_id, status="FINISHED")
