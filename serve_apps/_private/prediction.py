"""What a Predictor replica answers the gateway with: plain data, free of ONNX Runtime (the
gateway unpickles it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Prediction:
    version: int
    probabilities: np.ndarray  # (n, num_classes)
    region: str | None = None  # the datacenter of the replica that answered
    # It waited for its version to load on the replica: its latency is the load's, not the
    # model's (a release's latency gate leaves it out).
    cold: bool = False
