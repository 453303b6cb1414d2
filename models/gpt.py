"""A GPT-style decoder-only transformer (after nanoGPT), with size presets.

Byte-level by default (vocab 256): text needs no tokenizer download. Pre-norm blocks,
causal attention through ``scaled_dot_product_attention`` (flash/efficient kernels on
GPU), tied input/output embeddings, optional activation checkpointing per block.

Generation keeps a ``KVCache``: the prompt is run once (prefill), then each new token runs
alone against the cached keys and values of every position before it. The cache holds a
batch of rows of different lengths, so the decode steps of several streams share one
forward (``GPT.forward_cached``); ``run_blocks`` runs any range of blocks with their part of
the cache, so a pipeline stage can hold blocks [i, j) and another [j, k). Positions are
learned absolute embeddings (0..block_size-1): once a context outgrows the block, the window
slides and every position shifts, so each further token recomputes the last block_size
tokens, exactly what the uncached path does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


@dataclass(slots=True)
class KVCache:
    """Keys and values of a range of blocks, for a batch of rows of different lengths.

    ``keys[i]`` and ``values[i]`` belong to the i-th block of the range: (B, H, T_max, D/H)
    each, T_max = block_size, of which row b holds ``lengths[b]`` valid positions (the rest
    is room to grow). ``lengths`` is (B,) int64. A pipeline stage
    keeps the cache of its own blocks; ``run_blocks`` advances that cache's lengths.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: torch.Tensor

    @classmethod
    def empty(
        cls,
        cfg: GPTConfig,
        batch: int,
        n_blocks: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """Room for ``block_size`` positions per row in ``n_blocks`` blocks (all of them)."""
        shape = (batch, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        n = cfg.n_layer if n_blocks is None else n_blocks
        # Zeros, not torch.empty: a batch attends over its longest row's positions, masking the
        # others' tail, and a masked weight 0 times a garbage NaN value is still NaN.
        made = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2 * n)]
        return cls(made[:n], made[n:], torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def batch(self) -> int:
        return len(self.lengths)

    def select(self, rows: Sequence[int]) -> KVCache:
        """A cache of these rows only, in this order (copies: the rest can be freed)."""
        at = torch.tensor(rows, dtype=torch.long, device=self.lengths.device)
        return KVCache(
            [k.index_select(0, at) for k in self.keys],
            [v.index_select(0, at) for v in self.values],
            self.lengths.index_select(0, at),
        )

    @classmethod
    def cat(cls, caches: Sequence[KVCache]) -> KVCache:
        """The rows of ``caches`` (of the same blocks), one after another."""
        return cls(
            [torch.cat(ks) for ks in zip(*(c.keys for c in caches), strict=True)],
            [torch.cat(vs) for vs in zip(*(c.values for c in caches), strict=True)],
            torch.cat([c.lengths for c in caches]),
        )


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (B, T, D): all positions from 0, or with ``kv`` (this block's cached keys and
        values, (B, H, T_max, D/H) each) and ``lengths`` (B,), T new positions of each row
        starting at ``lengths[b]``; their keys and values are written into ``kv``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (B, T, D) -> (B, H, T, D/H)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        if kv is not None and lengths is not None:
            k, v, mask = _cache_update(kv, lengths, k, v)
            if mask is not None:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                return self.proj(y.transpose(1, 2).reshape(b, t, d))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


def _cache_update(
    kv: tuple[torch.Tensor, torch.Tensor], lengths: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Write the new keys and values (B, H, T, D/H) at each row's next positions; return the
    keys and values to attend to and the mask saying which each query may see (None: plain
    causal attention over the new ones, when every row starts empty, as in a prefill)."""
    keys, values = kv
    b, _, t, _ = k.shape
    pos = lengths[:, None] + torch.arange(t, device=k.device)  # (B, T) absolute positions
    rows = torch.arange(b, device=k.device)[:, None]
    # Advanced indices around a slice come first: keys[rows, :, pos] is (B, T, H, D/H).
    keys[rows, :, pos] = k.transpose(1, 2)
    values[rows, :, pos] = v.transpose(1, 2)
    if not lengths.any():
        return k, v, None
    end = int(pos.max()) + 1  # attend over the longest row's positions only, not all T_max
    mask = torch.arange(end, device=k.device) <= pos[:, None, :, None]  # (B, 1, T, end)
    return keys[:, :, :end], values[:, :, :end], mask


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

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); ``kv`` and ``lengths`` as in ``CausalSelfAttention``."""
        x = x + self.attn(self.ln1(x), kv, lengths)
        return x + self.mlp(self.ln2(x))


def run_blocks(blocks: Sequence[Block], x: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run ``x`` (B, T, D), T new positions of each row starting at ``cache.lengths``, through
    ``blocks`` (a range of a model's blocks, one cache layer each); store their keys and
    values and advance ``cache.lengths`` by T. Returns (B, T, D).

    Raises:
        ValueError: The cache has another number of layers, or no room for T more positions.
    """
    t, room = x.shape[1], cache.keys[0].shape[2] if cache.keys else 0
    if len(cache.keys) != len(blocks):
        raise ValueError(f"The cache holds {len(cache.keys)} layers for {len(blocks)} blocks.")
    if int(cache.lengths.max()) + t > room:
        raise ValueError(
            f"{t} more positions after {int(cache.lengths.max())} exceed the cache's {room}: "
            "past block_size, recompute the last block_size tokens without the cache."
        )
    for block, keys, values in zip(blocks, cache.keys, cache.values, strict=True):
        x = block(x, (keys, values), cache.lengths)
    cache.lengths += t
    return x


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, vocab); returns (B, 1). ``top_k`` keeps the
    k most likely tokens; ``top_p`` (nucleus sampling) the fewest most likely tokens whose
    probabilities add up to at least ``top_p`` (the most likely one always)."""
    logits = logits / max(temperature, 1e-6)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # the mass of the tokens more likely than each
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


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

    def new_cache(self, batch: int) -> KVCache:
        """An empty cache for all blocks, on the model's device and in its dtype."""
        w = self.wte.weight
        return KVCache.empty(self.cfg, batch, dtype=w.dtype, device=w.device)

    def embed(self, idx: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) at positions ``start[b]``.. of each row -> (B, T, D)."""
        pos = start[:, None] + torch.arange(idx.shape[1], device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output (B, T, D) -> logits (B, T, vocab)."""
        return self.lm_head(self.ln_f(x))

    def forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, T, vocab) of T new tokens ``idx`` (B, T) after each row's cached ones;
        the cache takes their keys and values. A prefill is an empty cache and the prompt."""
        return self.head(run_blocks(self.blocks, self.embed(idx, cache.lengths), cache))

    @torch.no_grad()
    def next_token(
        self,
        idx: torch.Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample one token after each row of ``idx`` (B, T) without a cache; returns (B, 1).

        The model sees the last ``block_size`` tokens only: a longer context is cut on the left.
        """
        logits = self(idx[:, -self.cfg.block_size :])[0][:, -1, :]
        return sample(logits, temperature, top_k, generator)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        kv_cache: bool = True,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``idx`` (B, T); returns (B, T + max_new_tokens).

        With ``kv_cache`` the prompt runs once and each token after it alone; without, every
        token runs the whole context again. Both give the same tokens (to float rounding).
        """
        if not kv_cache:
            for _ in range(max_new_tokens):
                idx = torch.cat([idx, self.next_token(idx, temperature, top_k, generator)], dim=1)
            return idx
        block = self.cfg.block_size
        cache = self.new_cache(idx.shape[0])
        logits = self.forward_cached(idx[:, -block:], cache)[:, -1]
        for i in range(max_new_tokens):
            idx = torch.cat([idx, sample(logits, temperature, top_k, generator)], dim=1)
            if i == max_new_tokens - 1:
                break
            if int(cache.lengths[0]) < block:
                logits = self.forward_cached(idx[:, -1:], cache)[:, -1]
            else:  # the window slides: every position shifts, so the last block runs again
                cache = self.new_cache(idx.shape[0])
                logits = self.forward_cached(idx[:, -block:], cache)[:, -1]
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
