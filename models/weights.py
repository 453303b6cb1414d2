"""Model weights as safetensors: a format that cannot run code when it is loaded."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn


def save_weights(model: nn.Module, path: Path) -> None:
    # contiguous() because safetensors refuses views, e.g. of tied or transposed weights.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load weights saved by ``save_weights`` into ``model`` (strict: every key must match)."""
    model.load_state_dict(load_file(str(path)), strict=True)
    return model
