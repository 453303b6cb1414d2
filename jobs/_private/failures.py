"""A failed job, counted where Prometheus sees it: ``aimass_jobs_failed_total{model, run}``.

Ray exports no job outcomes (``ray_finished_jobs_total`` counts drivers, failed or not), and
a driver's metrics reach its node's agent only every ~10 s, so a driver that simply exited
would take its count with it. On the failure path the driver therefore counts the failure,
waits until its node's metrics page shows it and one scrape interval more (bounded), then
lets the error end the job. The alert ``AimassTrainingJobFailed`` reads it.
"""

from __future__ import annotations

import logging
import time

import ray

from cluster.monitoring import prometheus
from cluster.settings import get_settings
from models.registry import Registry

JOBS_FAILED = "aimass_jobs_failed"
_WAIT_S = 30.0
logger = logging.getLogger(__name__)


def report_failure(registry: Registry, run_id: str) -> None:
    """Count the failed MLflow run ``run_id`` under its model (the run's experiment); never
    raises (the job's own error matters)."""
    run = run_id
    try:
        settings = get_settings()
        # A driver that failed before it joined the cluster has no metrics to export (and
        # a test calling this outside a cluster must not start one).
        if not (ray.is_initialized() and prometheus.enabled(settings)):
            return
        from ray.util.metrics import Counter

        found = registry.client.get_run(run_id)
        model = registry.client.get_experiment(found.info.experiment_id).name
        run = found.info.run_name or run_id

        failed = Counter(
            JOBS_FAILED,
            description="Jobs (train, tune, compress, evaluate) whose run failed, by model.",
            tag_keys=("model", "run"),
        )
        failed.inc(tags={"model": model, "run": run})
        shown = f'run="{run}"'
        deadline = time.monotonic() + _WAIT_S
        while time.monotonic() < deadline:
            pages = prometheus.scrape(prometheus.node_targets(settings.ray_temp_dir))
            if any(JOBS_FAILED in page and shown in page for page in pages):
                time.sleep(settings.prometheus_scrape_s + 1)  # one scrape of it
                return
            time.sleep(1)
        logger.warning("the failure of %s was not exported in %.0f s", run, _WAIT_S)
    except Exception:
        logger.exception("could not count the failure of %s", run)
