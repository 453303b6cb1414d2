"""When a Predictor replica reports itself unhealthy, so that Serve replaces it (no cluster)."""

from __future__ import annotations

import pytest

from serve_apps.predictor import Health


def test_failures_in_a_row_make_a_replica_unhealthy_for_good():
    health = Health(max_failures_in_a_row=3)
    for ok in (False, False, True, False, False):  # a success resets the count
        health.ran(ok)
    health.check()
    health.ran(ok=False)
    with pytest.raises(RuntimeError, match="3 ONNX Runtime runs failed in a row"):
        health.check()
    health.ran(ok=True)  # a replica that went bad is replaced, not trusted again
    with pytest.raises(RuntimeError):
        health.check()


def test_a_retired_replica_fails_its_checks_with_the_reason():
    health = Health(max_failures_in_a_row=5)
    health.check()
    health.retire("suspect host")
    with pytest.raises(RuntimeError, match="retired: suspect host"):
        health.check()
