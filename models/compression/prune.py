"""Pruning: unstructured magnitude pruning (masks) and structured pruning (a smaller model).

Unstructured pruning zeroes individual weights; the tensors keep their shape, so a dense
runtime (torch, ONNX Runtime) computes exactly as much as before: it shrinks a compressed
file, not the latency. Structured pruning removes whole channels and hidden units and
rebuilds the architecture narrower, which does cut the work.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from models.digits import DigitsCNN
from models.digits_transformer import DigitsTransformer
from models.exceptions import ModelError

PRUNABLE = (nn.Conv2d, nn.Linear)


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def apply_magnitude_pruning(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the ``sparsity`` share of the smallest |weights| across all Conv/Linear layers.

    Global L1 unstructured pruning (``torch.nn.utils.prune.global_unstructured``): layers
    lose different shares, whichever holds the smallest weights. The masks stay attached
    (``weight = weight_orig * weight_mask``), so a fine-tune keeps the zeros; call
    ``make_pruning_permanent`` before exporting. ``sparsity`` is the share of all prunable
    weights pruned in the end, so calling again with a higher value prunes further.

    Args:
        model: Modified in place.
        sparsity: Target share of zero weights, in [0, 1).

    Returns:
        ``model``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ModelError(f"sparsity must be in [0, 1), got {sparsity}; e.g. 0.5 prunes half.")
    params = _prunable(model)
    total = sum(m.weight.numel() for m, _ in params)
    already = sum(int((m.weight_mask == 0).sum()) for m, _ in params if prune.is_pruned(m))
    # An int amount counts weights among those not yet pruned (torch's PruningContainer).
    amount = max(0, round(sparsity * total) - already)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return model


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight (``prune.remove``): plain parameters again,
    with the zeros kept, ready for ``state_dict`` loading elsewhere and ONNX export."""
    for module in model.modules():
        masked = [name[: -len("_mask")] for name, _ in module.named_buffers(recurse=False)]
        for name in masked:
            if hasattr(module, f"{name}_orig"):
                prune.remove(module, name)
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights among the prunable (Conv/Linear) weights."""
    weights = [m.weight for m, _ in _prunable(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in their original order (keeps layouts stable)."""
    return scores.topk(k).indices.sort().values


def _keep_count(n: int, keep: float) -> int:
    return max(1, round(n * keep))


@torch.no_grad()
def _prune_cnn(model: DigitsCNN, keep: float) -> tuple[nn.Module, dict]:
    conv1, conv2 = model.features[0], model.features[2]
    fc1, fc2 = model.head[1], model.head[4]
    channels = _keep_count(conv1.out_channels, keep)
    hidden = _keep_count(fc1.out_features, keep)
    options = {"channels": channels, "hidden": hidden, "dropout": model.head[3].p}
    small = DigitsCNN(**options)
    # Filter importance: L1 norm of each output filter (Li et al., "Pruning Filters for
    # Efficient ConvNets"); the next layer keeps only the matching input slices.
    c1 = _top(conv1.weight.abs().sum((1, 2, 3)), channels)
    c2 = _top(conv2.weight.abs().sum((1, 2, 3)), 2 * channels)
    # Flatten lays fc1's inputs out as (channel, 4x4 position): keep whole channel blocks.
    cols = (c2[:, None] * 16 + torch.arange(16)).reshape(-1)
    h = _top(fc1.weight[:, cols].abs().sum(1), hidden)
    s_conv1, s_conv2 = small.features[0], small.features[2]
    s_fc1, s_fc2 = small.head[1], small.head[4]
    s_conv1.weight.copy_(conv1.weight[c1])
    s_conv1.bias.copy_(conv1.bias[c1])
    s_conv2.weight.copy_(conv2.weight[c2][:, c1])
    s_conv2.bias.copy_(conv2.bias[c2])
    s_fc1.weight.copy_(fc1.weight[h][:, cols])
    s_fc1.bias.copy_(fc1.bias[h])
    s_fc2.weight.copy_(fc2.weight[:, h])
    s_fc2.bias.copy_(fc2.bias)
    return small, options


@torch.no_grad()
def _prune_transformer(model: DigitsTransformer, keep: float) -> tuple[nn.Module, dict]:
    # Only the MLPs shrink: they hold two thirds of each block's weights, and attention's
    # width is tied to d_model here (q, k, v and proj are all d_model wide).
    block = model.blocks[0]
    width = _keep_count(block.mlp[0].out_features, keep)
    options = {
        "d_model": model.embed.out_features,
        "layers": len(model.blocks),
        "heads": block.heads,
        "dropout": block.dropout,
        "mlp_hidden": width,
    }
    small = DigitsTransformer(**options)
    # Copy every tensor whose shape did not change, then the kept MLP units block by block.
    # attrgetter, not state_dict: a masked layer's `weight` attribute is the pruned weight.
    for name, target in small.state_dict().items():
        source = attrgetter(name)(model)
        if source.shape == target.shape:
            target.copy_(source)
    for big_block, small_block in zip(model.blocks, small.blocks, strict=True):
        up, down = big_block.mlp[0], big_block.mlp[2]
        # A unit matters as much as what flows in times what flows out: |w_in|_1 * |w_out|_1.
        units = _top(up.weight.abs().sum(1) * down.weight.abs().sum(0), width)
        small_block.mlp[0].weight.copy_(up.weight[units])
        small_block.mlp[0].bias.copy_(up.bias[units])
        small_block.mlp[2].weight.copy_(down.weight[:, units])
        small_block.mlp[2].bias.copy_(down.bias)
    return small, options


# Architecture -> (its model class, the function that narrows it).
_STRUCTURED: dict[str, tuple[type[nn.Module], Callable[..., tuple[nn.Module, dict]]]] = {
    "digits_cnn": (DigitsCNN, _prune_cnn),
    "digits_transformer": (DigitsTransformer, _prune_transformer),
}


def structured_prune(architecture: str, model: nn.Module, keep: float) -> tuple[nn.Module, dict]:
    """A narrower copy of ``model``: the ``keep`` share of its channels / hidden units, chosen
    by L1 norm, with their trained weights.

    ``digits_cnn`` keeps conv channels and MLP hidden units; ``digits_transformer`` keeps
    MLP hidden units in every block. The copy is a fresh model of the same architecture
    (its tensors really are smaller) and usually needs a short ``fine_tune``.

    Args:
        architecture: Zoo name of ``model``'s architecture.
        model: The trained model; left unchanged. Pruning masks, if any, are honoured.
        keep: Share of channels / units to keep, in (0, 1].

    Returns:
        (the smaller model in eval mode, the constructor options that rebuild it with
        ``models.zoo.build_model(architecture, **options)``).
    """
    if architecture not in _STRUCTURED:
        raise ModelError(
            f"Structured pruning supports {sorted(_STRUCTURED)}, not {architecture!r}; "
            "use apply_magnitude_pruning for other architectures.",
            architecture=architecture,
        )
    cls, narrow = _STRUCTURED[architecture]
    if not isinstance(model, cls):
        raise ModelError(
            f"structured_prune({architecture!r}) got a {type(model).__name__}, not a "
            f"{cls.__name__}; pass the architecture name the model was built from.",
            architecture=architecture,
        )
    if not 0.0 < keep <= 1.0:
        raise ModelError(f"keep must be in (0, 1], got {keep}; e.g. 0.5 keeps half the units.")
    small, options = narrow(model, keep)
    return small.eval(), options


def fine_tune(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    weight_decay: float = 1e-4,
) -> nn.Module:
    """Train ``model`` in-process with AdamW and a one-cycle LR schedule (warmup, then
    cosine decay); also good for training a small model from scratch.

    Pruning masks are respected: a masked weight is ``weight_orig * 0``, so it gets no
    gradient and stays zero whatever AdamW does to ``weight_orig``.

    Args:
        model: Trained in place.
        x: (N, *input_shape) float32 features.
        y: (N,) int64 labels.
        epochs: Passes over ``x``.
        lr: Peak learning rate.
        batch_size: Rows per step; the last partial batch is dropped.
        seed: Seeds the shuffling, dropout and the augmentation.
        augment: Batch augmentation (e.g. ``architecture(name).augment``).
        weight_decay: AdamW's decoupled weight decay.

    Returns:
        ``model``, in eval mode.
    """
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    steps_per_epoch = len(ys) // batch_size
    if epochs < 1 or steps_per_epoch < 1:
        raise ModelError(
            f"fine_tune needs epochs >= 1 and at least one full batch; got epochs={epochs}, "
            f"{len(ys)} rows for batch_size={batch_size}."
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    model.train()
    # A private RNG stream: reproducible shuffles and augmentations (which draw from torch's
    # default generator) without reseeding the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(ys))
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                xb = augment(xs[idx]) if augment else xs[idx]
                loss = F.cross_entropy(model(xb), ys[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
    return model.eval()
