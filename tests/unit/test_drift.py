"""Input drift: profiles of the training split, PSI per feature, a replica's sampled watch."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from models.drift import InputCounts, InputProfile, psi
from serve_apps._private.drift import DriftWatch

THRESHOLD = 0.2  # Settings.drift_alert_psi's default


@pytest.fixture(scope="module")
def digits():
    x = load_digits().data.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[:1200]], x[order[1200:]]  # "train", "served"


def _score(profile: InputProfile, rows: np.ndarray) -> float:
    counts = InputCounts(profile)
    counts.add(rows)
    return counts.score()


def test_inputs_like_the_training_data_score_low_and_shifted_ones_high(digits):
    train, served = digits
    profile = InputProfile.of(train)
    assert _score(profile, served[:500]) < THRESHOLD / 2
    assert _score(profile, np.clip(served[:500] + 4, 0, 16)) > THRESHOLD  # brighter
    assert _score(profile, served[:500] * 0.5) > THRESHOLD  # dimmer
    one_row = np.repeat(served[:1], 500, axis=0)  # the same request over and over
    assert _score(profile, one_row) > THRESHOLD


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    e = np.array([0.25, 0.25, 0.5])
    assert psi(e, e) == pytest.approx(0.0)
    assert 0 < psi(e, [0.3, 0.2, 0.5]) < psi(e, [0.6, 0.1, 0.3])


def test_a_profile_survives_json_and_keeps_constant_features_in_one_bin(digits):
    train, _ = digits
    profile = InputProfile.of(train)
    back = InputProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert back == profile and back.rows == 1200
    # Pixel 0 is always 0 in digits: one edge, all of training above it; only values
    # below it (never seen in training) could move it.
    assert profile.edges[0] == (0.0,) and profile.expected[0] == (0.0, 1.0)
    assert all(sum(e) == pytest.approx(1.0) for e in profile.expected)
    with pytest.raises(ValueError, match="63 features; the profile has 64"):
        profile.count(train[:, :63])


def test_the_watch_scores_past_min_rows_follows_recent_inputs_and_skips_when_behind(digits):
    train, served = digits
    profile = InputProfile.of(train)
    watch = DriftWatch(min_rows=300, window_rows=600, max_pending_rows=1000)
    watch.observe("digits", 1, profile, served[:200])
    assert watch.fold() == {}  # too few rows to score
    for start in range(0, 600, 100):
        watch.observe("digits", 1, profile, np.clip(served[start : start + 100] + 4, 0, 16))
    assert watch.fold()["digits", 1] > THRESHOLD
    # The same traffic as training's again: the shift weighs less and less, then not at all.
    for _ in range(4):
        for start in range(0, 600, 100):
            watch.observe("digits", 1, profile, served[start : start + 100])
        score = watch.fold()["digits", 1]
    assert score < THRESHOLD
    # No more rows for a while: its score is withdrawn (NaN once), then it is forgotten.
    later = time.monotonic() + watch.idle_s + 1
    assert math.isnan(watch.fold(now=later)["digits", 1])
    assert watch.fold(now=later) == {}
    watch.observe("digits", 2, None, served[:100])  # a version without a profile: ignored
    assert ("digits", 2) not in watch.fold()
    behind = DriftWatch(max_pending_rows=1000, window_rows=10_000)
    for _ in range(11):  # over max_pending_rows before a fold: the rest is dropped
        behind.observe("digits", 3, profile, served[:100])
    behind.fold()
    assert behind._counts["digits", 3].rows == 1000
