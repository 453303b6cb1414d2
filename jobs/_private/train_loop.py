"""The function every Ray Train worker runs: DeepSpeed ZeRO over a Ray Data shard.

Each worker streams its share of the Parquet shards through Ray Data (shuffled per epoch
with a seed derived from the run's seed and the epoch), trains with DeepSpeed (initialised
here, inside the worker, on the process group Ray Train set up: gloo on CPU, NCCL on GPU),
all-reduces its metrics and reports them every epoch. Two tasks share the loop: classifiers
(cross-entropy, or distillation from a teacher; validation accuracy) and language models
(next-token cross-entropy; validation loss and perplexity).

Checkpoints are DeepSpeed's per-rank shards with a SHA-256 manifest per rank
(``jobs._private.checkpoints``), plus the full weights as safetensors from rank 0 for
publishing. A restarted worker group (a worker died: ``FailureConfig``) or a resubmitted
run of the same name verifies the latest checkpoint and continues from the step after it.
A fine-tune (``TrainConfig.init_from``) without a checkpoint of its own starts from its
parent version's weights instead of fresh ones, and validates them before the first step.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F

from actors.shard_store import ShardReader, ShardStoreShard
from jobs._private.checkpoints import CheckpointError, load_shards, save_shard
from jobs._private.deepspeed_setup import initialize
from jobs._private.loop_config import LOOP_KEY, LoopConfig
from jobs._private.train_metrics import TrainMetrics
from jobs.configs import TrainConfig
from models.evaluation import language_model_metrics, next_token_nats
from models.signature import LM
from models.weights import read_tensors, save_weights
from models.zoo import architecture

WEIGHTS = "model.safetensors"


def progress(line: str) -> None:
    # Not print(): Ray Train v2 patches print on workers to log *and* tee each line, so
    # the job log would show it twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _all_reduce_sum(*values: float) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


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


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over every position, in fp32."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)


def _teacher(loop: LoopConfig):
    """The teacher's logits as a function of a batch, from its verified ONNX package."""
    from models import package
    from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session
    from models.registry import Registry

    folder = Registry(loop.tracking_uri, loop.artifact_root).fetch(loop.teacher)
    session = cpu_session(folder / package.ONNX_FILE, threads=1)

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    return logits


class Task:
    """What differs between a classifier and a language model: the batch loss and the
    validation metrics. ``batch_loss`` returns (loss, rows)."""

    def __init__(self, loop: LoopConfig, dtype: torch.dtype) -> None:
        cfg = loop.train
        self.cfg, self.dtype, self.lm = cfg, dtype, cfg.task == LM
        self.augment = architecture(cfg.architecture).augment if cfg.augment else None
        self.teacher = _teacher(loop) if loop.teacher is not None else None

    def batch_loss(self, engine, batch: dict) -> tuple[torch.Tensor, int]:
        if self.lm:
            tokens = batch["tokens"].long()
            logits, _ = engine(tokens[:, :-1])
            return lm_loss(logits, tokens[:, 1:]), len(tokens)
        x = self.augment(batch["features"]) if self.augment else batch["features"]
        logits = engine(x.to(self.dtype)).float()  # losses in fp32, whatever the compute dtype
        labels = batch["label"]
        if self.teacher is None:
            return F.cross_entropy(logits, labels), len(labels)
        # The teacher sees the same (augmented) batch as the student.
        loss = distillation_loss(
            logits,
            self.teacher(x),
            labels,
            self.cfg.distill_temperature,
            self.cfg.distill_alpha,
        )
        return loss, len(labels)

    def validate(self, engine, shard) -> dict[str, float]:
        """Validation metrics over every rank's share of the validation split."""
        engine.module.eval()
        total = count = 0.0
        with torch.no_grad():
            for batch in shard.iter_torch_batches(
                batch_size=self.cfg.batch_size, device=engine.device
            ):
                if self.lm:
                    # The published test loss's own function (models.evaluation), so the
                    # two figures are one metric on two splits.
                    tokens = batch["tokens"].long()
                    logits, _ = engine(tokens[:, :-1])
                    nats, n = next_token_nats(
                        logits.float().cpu().numpy(), tokens[:, 1:].cpu().numpy()
                    )
                    total, count = total + nats, count + n
                else:
                    logits = engine(batch["features"].to(self.dtype))
                    total += (logits.argmax(1) == batch["label"]).sum().item()
                    count += len(batch["label"])
        engine.module.train()
        total, count = _all_reduce_sum(total, count)
        if self.lm:
            lm = language_model_metrics(total, count)
            return {"val_loss": lm["loss"], "val_perplexity": lm["perplexity"]}
        return {"val_accuracy": total / max(count, 1)}

    def summary(self, metrics: dict) -> str:
        if self.lm:
            return f"val_loss={metrics['val_loss']:.4f} ppl={metrics['val_perplexity']:.2f}"
        return f"val_acc={metrics['val_accuracy']:.4f}"


def _save_checkpoint(
    engine, cfg: TrainConfig, rank: int, world: int, metrics: dict, position: dict
) -> None:
    """Report ``metrics`` with a sharded checkpoint: every rank's DeepSpeed shard and
    manifest, and rank 0's full weights (safetensors) for publishing."""
    import deepspeed

    # ZeRO-3 partitions parameters across ranks: gather them (a collective, so every rank
    # enters) before rank 0 reads the full state dict.
    gather = (
        deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
        if cfg.zero_stage == 3
        else contextlib.nullcontext()
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with gather:
            if rank == 0:
                save_weights(engine.module, folder / WEIGHTS)
        save_shard(engine, folder, rank, world, position)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _restore(
    engine, cfg: TrainConfig, world: int, steps_per_epoch: int, init_checkpoint=None
) -> dict | None:
    """Load the run's latest checkpoint (verified) into ``engine``, else ``init_checkpoint``,
    the one the run starts from (a tuning trial that PBT restarted from another trial's
    checkpoint); its position, or None."""
    own = ray.train.get_checkpoint()
    checkpoint = own or init_checkpoint
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        position = load_shards(engine, Path(folder))
    if position["world_size"] != world:
        raise CheckpointError(
            f"The checkpoint was written by {position['world_size']} workers; resume the run "
            f"with num_workers={position['world_size']} (this one has {world})."
        )
    if own is None:
        position = _take_hyperparameters(engine, cfg, position, steps_per_epoch)
    return position


def _take_hyperparameters(engine, cfg: TrainConfig, position: dict, steps_per_epoch: int) -> dict:
    """Make state restored from another run's checkpoint follow this run's ``cfg``.

    DeepSpeed restores the optimizer's lr and weight decay, and the schedule's base lr, as
    that run had them; PBT continues with mutated ones. The schedule keeps its place in
    epochs, which is its place in steps unless the batch size (steps per epoch) changed.
    Returns the position, counted in this run's steps.
    """
    scheduler = engine.lr_scheduler  # LambdaLR: lr = base lr x factor(step)
    groups = scheduler.optimizer.param_groups
    was = (scheduler.base_lrs[0], groups[0]["weight_decay"])
    step = (position["epoch"] + 1) * steps_per_epoch
    scheduler.base_lrs = [cfg.lr] * len(groups)
    scheduler.last_epoch = engine.global_steps = step
    for group, factor in zip(groups, scheduler.lr_lambdas, strict=True):
        group.update(initial_lr=cfg.lr, lr=cfg.lr * factor(step), weight_decay=cfg.weight_decay)
    scheduler._last_lr = [group["lr"] for group in groups]
    if ray.train.get_context().get_world_rank() == 0:
        progress(
            f"[train] starting from another run's checkpoint of epoch {position['epoch'] + 1}: "
            f"lr {was[0]:.3g} -> {cfg.lr:.3g} (now {groups[0]['lr']:.3g} at step {step}), "
            f"weight_decay {was[1]:.3g} -> {cfg.weight_decay:.3g}"
        )
    return {**position, "step": step}


def _start_from_parent(engine, loop: LoopConfig) -> None:
    """Load the fine-tune's parent version's weights into ``engine``, as DeepSpeed's own
    warm start (``load_checkpoint(load_module_only=True)``) does: into the module (ZeRO-3
    gathers the partitioned parameters, rank 0's values are kept), then into the optimizer's
    fp32 master copy, which ZeRO keeps apart and would otherwise write back on the first step.
    """
    from models import package
    from models.registry import Registry

    registry = Registry(loop.tracking_uri, loop.artifact_root)
    info = registry.resolve(loop.train.init_from)
    # The weights only, checked against the manifest hash the registry recorded; safetensors
    # holds tensors only, so nothing in the file runs when it is read.
    folder = registry.fetch(info, files=(package.WEIGHTS_FILE,))
    state = read_tensors(folder / package.WEIGHTS_FILE)
    engine.load_module_state_dict(
        {"module": state}, strict=True, fetch_z3_params=loop.train.zero_stage == 3
    )
    refresh = getattr(engine.optimizer, "refresh_fp32_params", None)
    if refresh is not None:  # ZeRO 1-3 and bf16; a plain fp32 optimizer steps the module's
        refresh()


def _mlflow_logger(loop: LoopConfig):
    """A function logging epoch metrics to the job's MLflow run (rank 0 only), or None."""
    if not loop.mlflow_run_id:
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=loop.tracking_uri)

    def log(metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            client.log_metric(loop.mlflow_run_id, key, value, step=step)

    return log


def train_func(config: dict) -> None:
    """Ray Train's function on every worker: the run ``config[LOOP_KEY]`` (a LoopConfig)."""
    # DeepSpeed calls this deprecated collective on every step; the warning would flood the
    # job log (and, through Ray's log pipe, slow the step) without anything to act on.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
    loop: LoopConfig = config[LOOP_KEY]
    cfg = loop.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # The schedule steps once per optimizer step, i.e. every grad_accum micro-batches.
    steps_per_epoch = max(1, loop.steps_per_epoch // cfg.grad_accum)
    engine, dtype, total_steps = initialize(cfg, world, steps_per_epoch)
    progress(
        f"[train] worker rank {rank}/{world} pid {os.getpid()} on {ray.util.get_node_ip_address()}"
    )
    # Model, optimizer and schedule, as checkpointed.
    position = _restore(engine, cfg, world, steps_per_epoch, loop.init_checkpoint)
    start_epoch = position["epoch"] + 1 if position else 0
    if position and rank == 0:
        progress(
            f"[train] resumed from the checkpoint of epoch {start_epoch}/{cfg.epochs}, "
            f"step {position['step']}"
        )
    fine_tune = position is None and bool(cfg.init_from)  # a checkpoint of its own wins
    if fine_tune:
        _start_from_parent(engine, loop)
    epochs = Epochs(loop, engine, Task(loop, dtype), total_steps, start_epoch)
    if fine_tune:
        epochs.validate_start()
    for epoch in range(start_epoch, cfg.epochs):
        epochs.run(epoch)


class Epochs:
    """One worker's epochs: train on its shard, validate, report, log and checkpoint."""

    def __init__(self, loop: LoopConfig, engine, task: Task, total_steps: int, start_epoch: int):
        ctx = ray.train.get_context()
        self.cfg, self.engine, self.task = loop.train, engine, task
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.total_steps, self.start_epoch = total_steps, start_epoch
        self.metrics_out = TrainMetrics(self.cfg.name, self.rank)
        self.log_metrics = _mlflow_logger(loop) if self.rank == 0 else None
        if loop.shard_group:  # the same iter_torch_batches over a ShardStore group
            reader = ShardReader(loop.shard_group)
            self.train_shard = ShardStoreShard(reader, "train", self.rank, self.world)
            self.val_shard = ShardStoreShard(reader, "val", self.rank, self.world)
        else:
            self.train_shard = ray.train.get_dataset_shard("train")
            self.val_shard = ray.train.get_dataset_shard("val")
        self.started, self.start_step = time.monotonic(), engine.global_steps

    def validate_start(self) -> None:
        """Validate the weights a fine-tune starts from, before its first step: logged as
        ``start_<metric>`` (the parent's level on this data, where the curve begins)."""
        metrics = self.task.validate(self.engine, self.val_shard)
        if self.log_metrics:
            self.log_metrics({f"start_{key}": value for key, value in metrics.items()}, step=0)
        if self.rank == 0:
            progress(
                f"[train] starting from {self.cfg.init_from}'s weights: "
                f"{self.task.summary(metrics)} before the first step"
            )

    def run(self, epoch: int) -> None:
        t0 = time.monotonic()
        loss_sum, rows = _all_reduce_sum(*self._train(epoch, t0))
        elapsed = time.monotonic() - t0
        metrics = {
            "epoch": epoch,
            "step": self.engine.global_steps,
            "train_loss": loss_sum / max(rows, 1),
            **self.task.validate(self.engine, self.val_shard),
            "rows_per_s": rows / elapsed,
        }
        self._report(epoch, metrics)

    def _train(self, epoch: int, t0: float) -> tuple[float, int]:
        """One pass over this rank's shard: the summed loss (x rows) and the rows."""
        cfg, engine = self.cfg, self.engine
        loss_sum, rows = 0.0, 0
        # drop_last: every rank takes the same number of steps, so collectives never hang.
        # The shuffle seed changes with the epoch: a different, reproducible order each one.
        batches = self.train_shard.iter_torch_batches(
            batch_size=cfg.batch_size,
            device=engine.device,
            drop_last=True,
            local_shuffle_buffer_size=4 * cfg.batch_size,
            local_shuffle_seed=cfg.seed + epoch,
        )
        for batch in batches:
            loss, n = self.task.batch_loss(engine, batch)
            engine.backward(loss)
            before = engine.global_steps
            engine.step()
            value = loss.item()  # one device sync per step
            loss_sum, rows = loss_sum + value * n, rows + n
            step = engine.global_steps
            if step == before:
                continue  # inside a gradient accumulation window
            rate = rows / max(time.monotonic() - t0, 1e-9)  # this worker's rows/s
            self.metrics_out.on_step(step, value, n, rate)
            if self.rank == 0 and cfg.log_every and step % cfg.log_every == 0:
                done = (step - self.start_step) / max(time.monotonic() - self.started, 1e-9)
                progress(
                    f"[train] step {step}/{self.total_steps} loss={value:.4f} "
                    f"{rate * self.world:.0f} rows/s "
                    f"eta {(self.total_steps - step) / max(done, 1e-9):.0f}s"
                )
        return loss_sum, rows

    def _report(self, epoch: int, metrics: dict) -> None:
        """The epoch's metrics to the job log, MLflow and Ray Train, with a checkpoint
        every ``checkpoint_every`` epochs and at the last."""
        cfg = self.cfg
        self.metrics_out.val.set(metrics[cfg.objective()[0]])
        if self.log_metrics:
            self.log_metrics(metrics, step=epoch)
        if self.rank == 0:
            done_epochs = epoch - self.start_epoch + 1
            eta = (time.monotonic() - self.started) / done_epochs * (cfg.epochs - epoch - 1)
            progress(
                f"[train] epoch {epoch + 1}/{cfg.epochs} step {metrics['step']}/"
                f"{self.total_steps} loss={metrics['train_loss']:.4f} "
                f"{self.task.summary(metrics)} {metrics['rows_per_s']:.0f} rows/s eta {eta:.0f}s"
            )
        if epoch == cfg.epochs - 1 or (epoch + 1) % cfg.checkpoint_every == 0:
            position = {"epoch": epoch, "step": self.engine.global_steps}
            _save_checkpoint(self.engine, cfg, self.rank, self.world, metrics, position)
        else:
            ray.train.report(metrics)
