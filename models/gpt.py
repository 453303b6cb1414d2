"""A GPT-style decoder-only transformer (after nanoGPT), with size presets.

Byte-level by default (vocab 256): text needs no tokenizer download. Pre-norm blocks,
causal attention through ``scaled_dot_product_attention`` (flash/efficient kernels on
GPU), tied input/output embeddings, optional activation checkpointing per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(kw_only=True, frozen=True, slots=True)
class GPTConfig:
    """Shape of a GPT model."""

    vocab_size: int = 256
    """Token ids 0..vocab_size-1 (bytes by default)."""
    block_size: int = 128
    """Longest context, in tokens."""
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.0
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, ~30 % more compute."""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).")
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head) < 1:
            raise ValueError("vocab_size, block_size, n_layer and n_head must be >= 1.")

    @property
    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once), computed without building it."""
        d = self.n_embd
        per_block = (
            2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
        )  # two LayerNorms, qkv, proj, MLP in, MLP out
        return self.vocab_size * d + self.block_size * d + self.n_layer * per_block + 2 * d


# Shapes of GPT-2 small/medium and GPT-3 XL/2.7B/6.7B; their names count parameters with
# GPT-2's 50,257-token vocabulary (a byte vocabulary makes the same shapes smaller).
GPT_PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "small": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "125m": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "350m": GPTConfig(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "1.3b": GPTConfig(n_layer=24, n_head=32, n_embd=2048, block_size=2048),
    "2.7b": GPTConfig(n_layer=32, n_head=32, n_embd=2560, block_size=2048),
    "6.7b": GPTConfig(n_layer=32, n_head=32, n_embd=4096, block_size=2048),
}


def gpt_config(preset: str, **overrides) -> GPTConfig:
    try:
        return replace(GPT_PRESETS[preset], **overrides)
    except KeyError:
        raise ValueError(
            f"Unknown GPT preset {preset!r}; choose from {list(GPT_PRESETS)}."
        ) from None


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (B, T, D) -> (B, H, T, D/H)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab); loss when targets are given."""

    def __init__(self, cfg: GPTConfig | None = None, **options) -> None:
        super().__init__()
        self.cfg = cfg or GPTConfig(**options)
        c = self.cfg
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix in and out
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = idx.shape[1]
        if t > self.cfg.block_size:
            raise ValueError(f"Sequence of {t} tokens exceeds block_size {self.cfg.block_size}.")
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)))
        for block in self.blocks:
            if self.cfg.activation_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def next_token(
        self,
        idx: torch.Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample one token after each row of ``idx`` (B, T); returns (B, 1).

        The model sees the last ``block_size`` tokens only: a longer context is cut on the left.
        """
        logits = self(idx[:, -self.cfg.block_size :])[0][:, -1, :] / max(temperature, 1e-6)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``idx`` (B, T); returns (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            idx = torch.cat([idx, self.next_token(idx, temperature, top_k, generator)], dim=1)
        return idx


class LogitsOnly(nn.Module):
    """``GPT`` returning only the logits: the graph ONNX export and serving need."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)[0]


def encode(text: str) -> list[int]:
    """Byte-level tokens: UTF-8 bytes, so any text maps to ids 0..255."""
    return list(text.encode("utf-8"))


def decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")
