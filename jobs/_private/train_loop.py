"""The function every Ray Train worker runs: DeepSpeed ZeRO over a Ray Data shard.

Each worker reads its share of the Parquet shards through Ray Data, trains with DeepSpeed
(initialised here, inside the worker, on the process group Ray Train set up: gloo on CPU,
NCCL on GPU), all-reduces its metrics and reports them every epoch. Rank 0 checkpoints
the full weights as safetensors through Ray Train; a restarted worker group resumes from
the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F

from jobs.configs import TrainConfig
from models.weights import load_weights, save_weights
from models.zoo import architecture, build_model

WEIGHTS = "model.safetensors"
STATE = "train_state.json"


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
        "steps_per_print": 2**31 - 1,  # progress is printed by this loop, once per epoch
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


def progress(line: str) -> None:
    # Not print(): Ray Train v2 patches print on workers to log *and* tee each line, so
    # the job log would show it twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _restore(model: torch.nn.Module) -> int:
    """Load the latest Ray Train checkpoint into ``model``; return the epoch to start at."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        load_weights(model, Path(folder) / WEIGHTS)
        return json.loads((Path(folder) / STATE).read_text())["epoch"] + 1


def _all_reduce_sum(*values: float) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _evaluate(engine, shard, batch_size: int, dtype: torch.dtype) -> tuple[float, float]:
    """(correct, seen) over this worker's validation shard."""
    engine.module.eval()
    correct = seen = 0.0
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=batch_size, device=engine.device):
            logits = engine(batch["features"].to(dtype))
            correct += (logits.argmax(1) == batch["label"]).sum().item()
            seen += len(batch["label"])
    engine.module.train()
    return correct, seen


def _save_checkpoint(engine, zero_stage: int, rank: int, metrics: dict, epoch: int) -> None:
    """Report ``metrics`` with a checkpoint of the full weights, written by rank 0."""
    import deepspeed

    # ZeRO-3 partitions parameters across ranks: gather them (a collective, so every rank
    # enters) before rank 0 reads the full state dict.
    gather = (
        deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
        if zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather, tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            save_weights(engine.module, Path(folder) / WEIGHTS)
            (Path(folder) / STATE).write_text(json.dumps({"epoch": epoch}))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def _mlflow_logger(config: dict):
    """A function logging epoch metrics to the job's MLflow run (rank 0 only), or None."""
    if not config.get("mlflow_run_id"):
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=config["tracking_uri"])

    def log(metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            client.log_metric(config["mlflow_run_id"], key, value, step=step)

    return log


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al.: KL to the teacher's softened outputs (scaled by T^2 so its gradients
    keep their size as T changes), mixed with cross-entropy on the true labels."""
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.softmax(teacher / temperature, dim=1),
        reduction="batchmean",
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student, labels)


def _teacher(config: dict):
    """The teacher's logits as a function of a batch, from its verified ONNX package."""
    from models import package
    from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session
    from models.registry import Registry

    folder = Registry(config["tracking_uri"], config["artifact_root"]).fetch(config["teacher"])
    session = cpu_session(folder / package.ONNX_FILE, threads=1)

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    return logits


def train_func(config: dict) -> None:
    import deepspeed  # imported on the worker: heavy, and it probes the accelerator here

    # DeepSpeed calls this deprecated collective on every step; the warning would flood the
    # job log (and, through Ray's log pipe, slow the step) without anything to act on.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
    cfg = TrainConfig(**config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.architecture, **cfg.model_options)
    start_epoch = _restore(model)
    bf16 = cfg.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    ds_config = deepspeed_config(cfg, world, bf16)
    dtype = torch.bfloat16 if bf16 else torch.float32
    # The schedule steps once per optimizer step, i.e. every grad_accum micro-batches.
    steps_per_epoch = max(1, config["steps_per_epoch"] // cfg.grad_accum)
    factor = warmup_cosine(cfg.epochs * steps_per_epoch, steps_per_epoch)

    def schedule(optimizer):
        lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        for _ in range(start_epoch * steps_per_epoch):  # a resumed run continues its schedule
            lr_schedule.step()
        return lr_schedule

    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=model.parameters(),
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=ds_config,
    )
    augment = architecture(cfg.architecture).augment if cfg.augment else None
    teacher = _teacher(config) if config.get("teacher") else None
    log_metrics = _mlflow_logger(config) if rank == 0 else None
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    started = time.monotonic()
    for epoch in range(start_epoch, cfg.epochs):
        t0, loss_sum, rows = time.monotonic(), 0.0, 0
        # drop_last: every rank takes the same number of steps, so collectives never hang.
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.batch_size,
            device=engine.device,
            drop_last=True,
            local_shuffle_buffer_size=4 * cfg.batch_size,
            local_shuffle_seed=cfg.seed + epoch,
        )
        for batch in batches:
            x = augment(batch["features"]) if augment else batch["features"]
            logits = engine(x.to(dtype)).float()  # losses in fp32, whatever the compute dtype
            if teacher is None:
                loss = F.cross_entropy(logits, batch["label"])
            else:  # the teacher sees the same (augmented) batch as the student
                loss = distillation_loss(
                    logits,
                    teacher(x),
                    batch["label"],
                    cfg.distill_temperature,
                    cfg.distill_alpha,
                )
            engine.backward(loss)
            engine.step()
            loss_sum += loss.item() * len(batch["label"])
            rows += len(batch["label"])
        loss_sum, rows, correct, seen = _all_reduce_sum(
            loss_sum, rows, *_evaluate(engine, val_shard, cfg.batch_size, dtype)
        )
        elapsed = time.monotonic() - t0
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(rows, 1),
            "val_accuracy": correct / max(seen, 1),
            "rows_per_s": rows / elapsed,
        }
        last = epoch == cfg.epochs - 1
        if log_metrics:
            log_metrics(metrics, step=epoch)
        if rank == 0:
            eta = (
                (time.monotonic() - started) / (epoch - start_epoch + 1) * (cfg.epochs - epoch - 1)
            )
            progress(
                f"[train] epoch {epoch + 1}/{cfg.epochs} loss={metrics['train_loss']:.4f} "
                f"val_acc={metrics['val_accuracy']:.4f} {metrics['rows_per_s']:.0f} rows/s "
                f"eta {eta:.0f}s"
            )
        if last or (epoch + 1) % cfg.checkpoint_every == 0:
            _save_checkpoint(engine, cfg.zero_stage, rank, metrics, epoch)
        else:
            ray.train.report(metrics)
