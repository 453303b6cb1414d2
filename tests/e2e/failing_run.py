"""A job that fails inside its MLflow run, as a training job does when a worker's code
raises: submitted by test_metrics_and_alerts.py to see ``AimassTrainingJobFailed`` fire.

    ray job submit ... -- python tests/e2e/failing_run.py RUN_NAME
"""

import sys

import ray

from cluster.settings import get_settings
from jobs._private.runs import mlflow_run
from models.registry import Registry

if __name__ == "__main__":
    ray.init()  # as Ray Train's trainer does before the first worker starts
    registry = Registry.from_settings(get_settings())
    with mlflow_run(registry, "alert-probe", sys.argv[1], {}, {}):
        raise RuntimeError("a worker's loss went NaN (made up by the test)")
