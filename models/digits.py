"""A small CNN for scikit-learn's bundled 8x8 digits (the demo model, registered as ``digits``)."""

from __future__ import annotations

import torch
from torch import nn

NUM_FEATURES = 64  # 8 x 8 pixels, each a count in 0..16
NUM_CLASSES = 10
PIXEL_MAX = 16.0


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers, a pool and an MLP head; ~150 k parameters.

    It takes the raw pixel counts as stored in the dataset, shape (N, 64), and scales them
    itself, so the exported ONNX model needs no pre-processing on the serving side.
    Returns logits of shape (N, 10).
    """

    def __init__(self, channels: int = 32, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 2c, 8, 8) -> (N, 2c, 4, 4)
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 16, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8) / PIXEL_MAX  # (N, 64) -> (N, 1, 8, 8) in [0, 1]
        return self.head(self.features(x))


def random_shift(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation: shift a whole batch by -1..1 pixels in x and y (wrapping).

    (N, 64) -> (N, 64). On this small dataset it lifts held-out accuracy by about a point.
    """
    dy, dx = torch.randint(-1, 2, (2,), generator=generator).tolist()
    return torch.roll(x.reshape(-1, 8, 8), shifts=(dy, dx), dims=(1, 2)).reshape(-1, NUM_FEATURES)
