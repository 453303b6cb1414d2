"""A pre-norm transformer encoder classifier: the project's reference model for serving and
compression benchmarks (4 layers, d=256, 16 tokens: about 3.2 M parameters).

On digits, each 8x8 image is read as 16 tokens of 4 pixels (2x2 patches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.digits import NUM_CLASSES, NUM_FEATURES, PIXEL_MAX


class Block(nn.Module):
    """Pre-norm attention + MLP. Attention through scaled_dot_product_attention."""

    def __init__(self, d_model: int, heads: int, dropout: float, mlp_hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, d_model)
        )
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=2)
        # (B, T, D) -> (B, H, T, D/H)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class DigitsTransformer(nn.Module):
    """Raw pixel counts (N, 64) -> logits (N, 10), through 16 patch tokens.

    ``mlp_hidden`` is the width of each block's MLP (default ``4 * d_model``); structured
    pruning (``models.compression``) rebuilds the model narrower through it.
    """

    def __init__(
        self,
        d_model: int = 256,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.1,
        mlp_hidden: int | None = None,
    ) -> None:
        super().__init__()
        hidden = mlp_hidden or 4 * d_model
        self.embed = nn.Linear(4, d_model)  # one 2x2 patch per token
        self.pos = nn.Parameter(torch.zeros(1, 16, d_model))
        self.blocks = nn.ModuleList(Block(d_model, heads, dropout, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, NUM_CLASSES)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 64) -> (N, 4, 2, 4, 2) -> (N, 4, 4, 2, 2) -> (N, 16 tokens, 4 pixels)
        img = x.reshape(-1, 4, 2, 4, 2) / PIXEL_MAX
        tokens = img.permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        h = self.embed(tokens) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(dim=1))


assert NUM_FEATURES == 64  # the patching above assumes 8x8 images
