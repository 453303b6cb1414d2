"""Training metrics exported through ``ray.util.metrics``: Prometheus and the Ray dashboard.

One place for the names and tag keys, so dashboards and alerts have one source. Each worker
sets them as it trains; Ray's metrics agent on the node exports them.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

RUN_TAG = "run"
RANK_TAG = "rank"
_TAGS = (RUN_TAG, RANK_TAG)


class TrainMetrics:
    """Step, loss, throughput and validation gauges of one worker of one run."""

    def __init__(self, run: str, rank: int) -> None:
        tags = {RUN_TAG: run, RANK_TAG: str(rank)}
        self.step = Gauge("aimass_train_step", "Optimizer steps taken.", tag_keys=_TAGS)
        self.loss = Gauge("aimass_train_loss", "Training loss of the last step.", tag_keys=_TAGS)
        self.rows_per_s = Gauge(
            "aimass_train_rows_per_second", "Rows trained per second, this worker.", tag_keys=_TAGS
        )
        self.val = Gauge(
            "aimass_train_val_metric",
            "The validation metric (accuracy or loss, see the run) after the last epoch.",
            tag_keys=_TAGS,
        )
        self.rows = Counter("aimass_train_rows_total", "Rows trained on.", tag_keys=_TAGS)
        for metric in (self.step, self.loss, self.rows_per_s, self.val, self.rows):
            metric.set_default_tags(tags)

    def on_step(self, step: int, loss: float, rows: int, rows_per_s: float) -> None:
        self.step.set(step)
        self.loss.set(loss)
        self.rows.inc(rows)
        self.rows_per_s.set(rows_per_s)
