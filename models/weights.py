"""Model weights as safetensors: a format that cannot run code when it is loaded."""

from __future__ import annotations

import json
from pathlib import Path

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


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load weights saved by ``save_weights`` into ``model`` (strict: every key must match)."""
    with safe_open(str(path), framework="pt") as f:
        state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
        tied = json.loads((f.metadata() or {}).get(_TIED, "{}"))
    state.update({name: state[source] for name, source in tied.items()})
    model.load_state_dict(state, strict=True)
    return model
