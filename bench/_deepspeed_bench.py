"""Shared pieces of the DeepSpeed benchmarks: the GPT run config, the engine, the data, one
training step. Runs inside training processes (Ray Train workers or ``torchrun`` ranks).

Heavy imports (DeepSpeed) happen inside the functions, on the process that trains.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from jobs import deepspeed_config
from jobs.configs import TrainConfig
from models.dataset import dataset_uri, read_manifest
from models.zoo import build_model

DATASET = "python_stdlib"


def gpt_train_config(
    name: str, *, preset: str, zero_stage: int, batch_size: int, **model_options
) -> TrainConfig:
    """A TrainConfig for the ``gpt`` architecture (model options: GPTConfig overrides)."""
    return replace(
        TrainConfig(name=name, architecture="gpt", dataset=DATASET),
        model_options={"preset": preset, **model_options},
        zero_stage=zero_stage,
        batch_size=batch_size,
    )


def quiet() -> None:
    """DeepSpeed's INFO lines and per-step deprecation warnings off (they go through log pipes)."""
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")
    warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.* is deprecated")


def num_params(cfg: TrainConfig) -> int:
    """Psi: the model's parameters (tied embeddings once), counted before DeepSpeed sees it."""
    return sum(p.numel() for p in build_model(cfg.architecture, **cfg.model_options).parameters())


def init_engine(cfg: TrainConfig, world_size: int, *, bf16: bool, extra: dict | None = None):
    """DeepSpeed over a fresh model of ``cfg``, configured by the training loop's own
    ``deepspeed_config`` (plus ``extra`` keys), with the loop's torch AdamW.

    The process group must exist already (Ray Train or the torchrun entry made it)."""
    import deepspeed

    quiet()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.architecture, **cfg.model_options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    config = deepspeed_config(cfg, world_size, bf16) | (extra or {})
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), optimizer=optimizer, config=config
    )
    return engine


def load_tokens(storage_root: str) -> np.ndarray:
    """The ingested text dataset's train split, (N, block_size + 1) int64 (SHA-checked)."""
    return read_manifest(dataset_uri(storage_root, DATASET)).load_tokens("train")


def batch(tokens: np.ndarray, step: int, rank: int, world: int, micro: int) -> torch.Tensor:
    """Rank ``rank``'s micro-batch of global step ``step``: consecutive rows, wrapping."""
    start = (step * world + rank) * micro
    rows = np.arange(start, start + micro) % len(tokens)
    return torch.from_numpy(tokens[rows])


def train_step(engine, sequences: torch.Tensor) -> float:
    """One optimizer step of next-token prediction on ``sequences`` (B, T+1); the loss."""
    _, loss = engine(sequences[:, :-1], sequences[:, 1:])
    engine.backward(loss)
    engine.step()
    return float(loss.item())


RESULT_FILE = "bench_result.json"


def report_json(payload, rank: int) -> None:
    """Hand ``payload`` to the driver through Ray Train (every rank calls this once).

    Train v2 keeps metrics only alongside a checkpoint, so rank 0 writes the payload into
    one; ``result_json`` reads it back from the run's Result."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            (Path(folder) / RESULT_FILE).write_text(json.dumps(payload))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"rank": rank}, checkpoint=checkpoint)


def result_json(result):
    """The payload rank 0 passed to ``report_json``, from a finished run's Result."""
    with result.checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / RESULT_FILE).read_text())
