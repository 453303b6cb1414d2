"""A GPT in Hugging Face ``transformers``' GPT-2 format: ``config.json`` + ``model.safetensors``
that ``GPT2LMHeadModel.from_pretrained(folder)`` loads with the same logits, so the weights
trained here also serve in vLLM, Ray Serve LLM, TGI or any ``transformers`` code.

The architectures are the same (pre-norm blocks, learned absolute positions, tied input and
output embeddings, LayerNorm eps 1e-5, 1/sqrt(head size) attention scaling); what differs
is naming and GPT-2's ``Conv1D``, which stores linear weights transposed (in, out). Our MLP
uses the exact GELU, so the config says ``activation_function: "gelu"`` (GPT-2's own is the
tanh approximation, ``gelu_new``). Tokens are UTF-8 bytes (vocab 256): there is no
tokenizer to ship; ids are ``list(text.encode())``.

Written with safetensors and json only: exporting needs no ``transformers`` install.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.gpt import GPT

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def gpt2_config(model: GPT) -> dict:
    """``transformers.GPT2Config`` of ``model``, as its ``config.json``."""
    c = model.cfg
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": 4 * c.n_embd,
        "activation_function": "gelu",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": "float32",
    }


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """``model``'s weights under GPT-2's names (``lm_head`` is tied: not stored)."""
    sd = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    out = {
        "transformer.wte.weight": sd["wte.weight"],
        "transformer.wpe.weight": sd["wpe.weight"],
        "transformer.ln_f.weight": sd["ln_f.weight"],
        "transformer.ln_f.bias": sd["ln_f.bias"],
    }
    renamed = {  # ours -> GPT-2's, and whether GPT-2's Conv1D stores it transposed
        "ln1": ("ln_1", False),
        "ln2": ("ln_2", False),
        "attn.qkv": ("attn.c_attn", True),
        "attn.proj": ("attn.c_proj", True),
        "mlp.0": ("mlp.c_fc", True),
        "mlp.2": ("mlp.c_proj", True),
    }
    for i in range(model.cfg.n_layer):
        for ours, (theirs, conv1d) in renamed.items():
            weight, bias = sd[f"blocks.{i}.{ours}.weight"], sd[f"blocks.{i}.{ours}.bias"]
            out[f"transformer.h.{i}.{theirs}.weight"] = weight.t() if conv1d else weight
            out[f"transformer.h.{i}.{theirs}.bias"] = bias
    return {k: v.contiguous() for k, v in out.items()}


def export_gpt2(model: GPT, folder: Path) -> Path:
    """Write ``model`` to ``folder`` in ``transformers``' GPT-2 format; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(gpt2_config(model), indent=2))
    save_file(gpt2_state_dict(model), folder / WEIGHTS_FILE, metadata={"format": "pt"})
    return folder
