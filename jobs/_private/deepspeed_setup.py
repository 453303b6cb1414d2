"""DeepSpeed for a TrainConfig: the config dict, the LR schedule and the engine.

Kept apart from the Ray Train loop (no Ray import) so the same setup runs under Ray Train,
under ``torchrun`` (bench.train_overhead) and on a lone GPU (bench.gpu_check).
"""

from __future__ import annotations

import math

import torch

from jobs.configs import TrainConfig
from models.zoo import build_model


def deepspeed_config(cfg: TrainConfig, world_size: int, bf16: bool) -> dict:
    """DeepSpeed's config for ``cfg``: ZeRO stage and offload, batch sizes, clipping, dtype.

    With optimizer offload DeepSpeed builds the optimizer itself (DeepSpeedCPUAdam, which
    runs the Adam step on the CPU); otherwise the loop passes in a torch AdamW.
    """
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    config = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,  # progress is printed by the training loop
    }
    if cfg.grad_clip > 0:
        config["gradient_clipping"] = cfg.grad_clip
    if cfg.offload_optimizer:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay},
        }
    return config


def warmup_cosine(total_steps: int, warmup_steps: int, floor: float = 0.05):
    """LR multiplier: linear warmup to 1, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def use_bf16(cfg: TrainConfig) -> bool:
    """bf16 mixed precision on GPUs that support it; fp32 everywhere else."""
    return cfg.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def initialize(cfg: TrainConfig, world_size: int, steps_per_epoch: int):
    """A fresh model of ``cfg`` under DeepSpeed, with AdamW (torch's, or DeepSpeedCPUAdam
    when the optimizer is offloaded) and warmup + cosine over ``cfg.epochs`` epochs of
    ``steps_per_epoch`` optimizer steps. Returns (engine, compute dtype, total steps).

    The process group must exist already (Ray Train, torchrun or the caller made it)."""
    import deepspeed  # heavy, and it probes the accelerator: only where training runs

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.architecture, **cfg.model_options)
    bf16 = use_bf16(cfg)
    ds_config = deepspeed_config(cfg, world_size, bf16)
    total_steps = cfg.epochs * steps_per_epoch
    factor = warmup_cosine(total_steps, min(steps_per_epoch, max(1, total_steps // 10)))
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=model.parameters(),
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
        config=ds_config,
    )
    return engine, (torch.bfloat16 if bf16 else torch.float32), total_steps
