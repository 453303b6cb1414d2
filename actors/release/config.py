"""What a release is: how traffic moves from ``champion`` to ``candidate`` and what stops it.

Three modes:

- ``canary``: the candidate answers a growing share of requests (``steps``, in percent);
  each step lasts at least ``min_step_s`` and ``min_requests`` candidate answers, and the
  next step is taken only while the candidate's online metrics stay within the thresholds
  below. The last step (100) promotes it: ``champion`` moves to the candidate.
- ``ab``: a fixed ``weight`` share until an operator aborts it; metrics are compared but
  nothing is promoted by itself (a broken threshold still rolls it back).
- ``shadow``: the champion answers everything; a copy of each request (``weight`` share) goes
  to the candidate, whose answers are compared and discarded. Ends with a verdict once
  ``min_requests`` copies were compared: passed (the candidate stays ``candidate``) or failed
  (rolled back).

A rollback removes the ``candidate`` alias and tags the version with the reason; traffic
returns to the champion at once. Which requests go to the candidate is sticky: a hash of the
API key (or the ``X-User-ID`` header) and the release id, so a user keeps one arm while the
share only grows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["canary", "ab", "shadow"]


class Thresholds(BaseModel):
    """When the candidate is worse than allowed. A check needs ``min_samples`` of its kind."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float = Field(
        0.02, ge=0, le=1, description="Candidate answers that failed (errors, timeouts)."
    )
    max_latency_ratio: float = Field(
        2.0, gt=0, description="Candidate p95 / champion p95 (plus latency_slack_ms)."
    )
    latency_slack_ms: float = Field(
        10.0, ge=0, description="Absolute allowance over the ratio: small models are noisy."
    )
    min_agreement: float = Field(
        0.9, ge=0, le=1, description="Share of compared requests where both predict the same."
    )
    max_accuracy_drop: float = Field(
        0.02, ge=0, le=1, description="Champion accuracy minus candidate's, on fed-back labels."
    )
    min_samples: int = Field(20, ge=1, description="Samples a check needs before it counts.")


class ReleaseConfig(BaseModel):
    """One release of ``model``'s candidate (``python -m jobs.release --model NAME``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Registered model name.")
    candidate: int | None = Field(
        None, ge=1, description="Version to release (default: the `candidate` alias)."
    )
    mode: Mode = "canary"
    steps: list[float] = Field(
        [5, 25, 50, 100], min_length=1, description="Canary shares in percent, rising to 100."
    )
    weight: float = Field(
        10, gt=0, le=100, description="ab: the candidate's share; shadow: share copied, percent."
    )
    min_step_s: float = Field(10.0, ge=0, description="Shortest time spent at each step.")
    min_requests: int = Field(
        50, ge=1, description="Candidate answers (shadow: comparisons) needed per step."
    )
    max_release_s: float = Field(
        3600.0,
        gt=0,
        description="Canary, shadow: roll back when the steps cannot gather their requests "
        "within this many seconds (an A/B split runs until aborted).",
    )
    compare: bool = Field(
        True, description="Also ask the champion for canary requests, to measure agreement."
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @model_validator(mode="after")
    def _rising_steps(self) -> ReleaseConfig:
        s = self.steps
        if any(not 0 < x <= 100 for x in s) or any(a >= b for a, b in zip(s, s[1:], strict=False)):
            raise ValueError(f"steps={s}: give rising percentages in (0, 100], e.g. 5,25,50,100.")
        if self.mode == "canary" and s[-1] != 100:
            raise ValueError(f"steps={s}: a canary ends at 100 (the promotion).")
        return self
