"""The alert rules shipped with aimass, as one table rendered into a Prometheus rules file.

Ray exports every ``aimass_*`` metric with its ``ray_`` prefix. The windows (``rate(…[W])``)
and how long a condition must hold (``for``) come from the settings, so that a test can fire
and resolve an alert in seconds with the very expressions a cluster runs; ``alerts.yml``
beside this module is the rendering with the defaults (5 m windows, 2 m), for a Prometheus
that aimass does not start (a unit test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

SHIPPED = Path(__file__).with_name("alerts.yml")
GROUP = "aimass"
ERROR_RATE = 0.05
"""A model's share of 5xx answers past which it alerts."""
QUOTA_REJECTIONS_PER_S = 5.0
"""Quota refusals (429 rate_limited) per second, over all keys, that count as a surge."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert: its name, a PromQL expression with ``{w}`` for the window, a severity and
    what it tells the operator (Prometheus templates such as ``{{ $labels.model }}``)."""

    name: str
    expr: str
    severity: str
    summary: str
    instant: bool = False  # fires at once (an event already over), ignoring ``for``


def rules(p99_budget_ms: float, drift_threshold: float) -> list[Rule]:
    answers = "ray_aimass_requests_total"
    return [
        Rule(
            "AimassModelErrorRate",
            f'sum by (model) (rate({answers}{{status=~"5.."}}[{{w}}])) / '
            f"sum by (model) (rate({answers}[{{w}}])) > {ERROR_RATE}",
            "critical",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of answers are server errors.",
        ),
        Rule(
            "AimassLatencyP99OverBudget",
            "histogram_quantile(0.99, sum by (model, le) "
            "(rate(ray_aimass_request_latency_ms_bucket[{w}]))) > " + f"{p99_budget_ms:g}",
            "warning",
            "{{ $labels.model }}: p99 latency {{ $value | humanize }} ms, over the "
            f"{p99_budget_ms:g} ms budget.",
        ),
        Rule(
            "AimassReplicasBelowMinimum",
            # Serve's target is at least the deployment's minimum; healthy replicas under it
            # for the whole window mean replicas die or cannot be placed.
            "sum by (application, deployment) (ray_serve_deployment_replica_healthy) < "
            "max by (application, deployment) (ray_serve_autoscaling_target_replicas)",
            "critical",
            "{{ $labels.application }}/{{ $labels.deployment }}: fewer healthy replicas "
            "({{ $value }}) than its target.",
        ),
        Rule(
            "AimassQuotaRejectionsSurging",
            f'sum (rate(ray_aimass_rejections_total{{reason="rate_limited"}}[{{w}}])) '
            f"> {QUOTA_REJECTIONS_PER_S:g}",
            "warning",
            "{{ $value | humanize }} requests/s refused over their key's quota.",
        ),
        Rule(
            "AimassReleaseRolledBack",
            _rose('ray_aimass_release_events_total{action="rollback"}', "model"),
            "warning",
            "{{ $labels.model }}: a release candidate was rolled back.",
            instant=True,
        ),
        Rule(
            "AimassReleaseStalled",
            # A state, not an event: the controller sets it every tick of a running release.
            "max by (model) (ray_aimass_release_stalled) > 0",
            "warning",
            "{{ $labels.model }}: the release's candidate gets none of the traffic (every "
            "caller is outside its share: send X-User-ID per end user, or abort it).",
        ),
        Rule(
            "AimassInputDrift",
            f"max by (model, version) (ray_aimass_drift_score) > {drift_threshold:g}",
            "warning",
            "{{ $labels.model }} v{{ $labels.version }}: inputs drifted from the training data "
            "(PSI {{ $value | humanize }}).",
        ),
        Rule(
            "AimassTrainingJobFailed",
            # max_over_time, not increase: a failure's series starts at 1, and increase()
            # needs a sample before it.
            "max by (model, run) (max_over_time(ray_aimass_jobs_failed_total[{w}])) > 0",
            "warning",
            "{{ $labels.model }}: job run {{ $labels.run }} failed.",
            instant=True,
        ),
    ]


def _rose(counter: str, by: str) -> str:
    """PromQL: ``counter`` rose within the window, its first event included. Ray creates a
    counter's series at its first increment, already at 1, and ``increase()`` needs a
    sample before the rise (a model's first rollback went unseen): a series that did not
    exist a window ago counts as a rise too."""
    return (
        f"sum by ({by}) (increase({counter}[{{w}}])) > 0 or "
        f"sum by ({by}) ({counter} unless {counter} offset {{w}})"
    )


def render(window_s: int, for_s: int, p99_budget_ms: float, drift_threshold: float) -> str:
    """The rules file Prometheus loads (``rule_files``)."""
    entries = [
        {
            "alert": rule.name,
            "expr": rule.expr.replace("{w}", f"{window_s}s"),
            "for": "0s" if rule.instant else f"{for_s}s",
            "labels": {"severity": rule.severity},
            "annotations": {"summary": rule.summary},
        }
        for rule in rules(p99_budget_ms, drift_threshold)
    ]
    header = "# Rendered by cluster/monitoring/alerts.py (edit the table there, not this file).\n"
    body = {"groups": [{"name": GROUP, "rules": entries}]}
    return header + yaml.safe_dump(body, sort_keys=False, width=100)
