"""Model weights as safetensors: a format that cannot run code when it is loaded."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

_TIED = "aimass.tied"  # metadata key: {name: name it is tied to}


def save_weights(model: nn.Module, path: Path) -> None:
    """Write ``model``'s state dict; a tied tensor (GPT's shared embedding and output
    matrix) is stored once and its other names recorded in the file's metadata."""
    state, tied, first = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        # clone: under DeepSpeed a parameter is a view into one flat buffer, which
        # safetensors refuses (and would otherwise save whole).
        state[name] = tensor.detach().cpu().clone()
    save_file(state, str(path), metadata={_TIED: json.dumps(tied)})


def read_tensors(path: Path, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a file written by ``save_weights``, tied names included (sharing one tensor).

    ``names`` reads only those: safetensors reads each tensor alone, so a pipeline stage
    loads its slice without the rest of the file.
    """
    with safe_open(str(path), framework="pt") as f:
        tied = json.loads((f.metadata() or {}).get(_TIED, "{}"))
        wanted = [*f.keys(), *tied] if names is None else list(names)
        stored: dict[str, torch.Tensor] = {}
        for name in wanted:
            source = tied.get(name, name)
            if source not in stored:
                stored[source] = f.get_tensor(source)
        return {name: stored[tied.get(name, name)] for name in wanted}


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load weights saved by ``save_weights`` into ``model`` (strict: every key must match)."""
    model.load_state_dict(read_tensors(path), strict=True)
    return model
