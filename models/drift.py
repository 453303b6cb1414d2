"""Input drift: how far the inputs a version sees have moved from its training data.

``InputProfile`` is the training split's distribution, recorded at ingest: per feature, the
decile edges of its values and the share of rows in each bin. ``InputCounts`` counts served
inputs into the same bins; ``psi`` compares the two per feature with the population
stability index, sum((a - e) * ln(a / e)) over the bins of actual shares ``a`` and expected
shares ``e`` (rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant). A
version's drift score is its largest per-feature PSI: a shift in a few features is the
usual case, and the mean over 64 pixels would hide it.

Bins are quantiles of the training data, so a feature with few distinct values (the digits'
pixels: integers 0-16, most of them 0) gets fewer, uneven bins; a constant one gets a single
bin and never drifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INPUT_PROFILE = "input_profile"
"""The key of a profile in a dataset's manifest and in a package's config.json (extra)."""
BINS = 10
_FLOOR = 1e-4  # an empty bin's share: ln(0) otherwise


@dataclass(frozen=True, slots=True)
class InputProfile:
    """Per feature: the interior bin edges, and the training rows' share in each bin."""

    edges: tuple[tuple[float, ...], ...]
    expected: tuple[tuple[float, ...], ...]
    rows: int

    @classmethod
    def of(cls, x: np.ndarray, bins: int = BINS) -> InputProfile:
        """The profile of rows ``x`` (n, features): the training split's, at ingest."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        quantiles = np.linspace(0, 1, bins + 1)[1:-1]
        edges = tuple(tuple(np.unique(np.quantile(col, quantiles)).tolist()) for col in x.T)
        profile = cls(edges, (), len(x))
        counts = profile.count(x)
        expected = tuple(tuple((c / c.sum()).tolist()) for c in counts)
        return cls(edges, expected, len(x))

    def count(self, x: np.ndarray) -> list[np.ndarray]:
        """Rows ``x`` counted into this profile's bins, one array per feature."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if x.shape[1] != len(self.edges):
            raise ValueError(f"{x.shape[1]} features; the profile has {len(self.edges)}")
        return [
            np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
            for edges, col in zip(self.edges, x.T, strict=True)
        ]

    def to_dict(self) -> dict:
        return {"edges": self.edges, "expected": self.expected, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: dict) -> InputProfile:
        return cls(
            tuple(tuple(e) for e in data["edges"]),
            tuple(tuple(e) for e in data["expected"]),
            int(data["rows"]),
        )


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """The population stability index of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), _FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


class InputCounts:
    """Served inputs of one version counted into its profile's bins (not thread-safe: one
    owner folds batches in and reads scores)."""

    def __init__(self, profile: InputProfile) -> None:
        self.profile = profile
        self.counts = [np.zeros(len(e) + 1) for e in profile.edges]
        self.rows = 0.0

    def add(self, x: np.ndarray) -> None:
        for total, counted in zip(self.counts, self.profile.count(x), strict=True):
            total += counted
        self.rows += len(x)

    def decay(self, factor: float) -> None:
        """Weigh what was counted so far by ``factor``: the score follows recent inputs."""
        for total in self.counts:
            total *= factor
        self.rows *= factor

    def per_feature(self) -> np.ndarray:
        """PSI of each feature (zeros before any row)."""
        if self.rows <= 0:
            return np.zeros(len(self.counts))
        return np.array(
            [
                psi(expected, total / total.sum())
                for expected, total in zip(self.profile.expected, self.counts, strict=True)
            ]
        )

    def score(self) -> float:
        """The version's drift score: its largest per-feature PSI."""
        return float(self.per_feature().max(initial=0.0))
