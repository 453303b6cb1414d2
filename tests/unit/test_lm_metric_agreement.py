"""A language model's loss is one metric: the training loop's validation (torch) and the
published test loss (the exported ONNX graph in ONNX Runtime) give the
same number on the same rows. Issue 11 was a 0.9-nat gap between the two that came from
the rows each side read, not from the computation; this pins the computation."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from jobs._private.loop_config import LoopConfig
from jobs._private.publish import write_package
from jobs._private.train_loop import Task
from jobs.configs import preset
from models.zoo import build_model

BLOCK = 128  # gpt_tiny's block size


@pytest.fixture
def one_rank_process_group(tmp_path: Path):
    """A gloo process group of one rank, as Ray Train makes for each worker (no Ray here):
    the loop all-reduces its validation sums over it."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class _Engine:
    """The part of a DeepSpeed engine the loop's validation uses: its module, its device and
    its forward (the module's). Not a real engine: DeepSpeed's CPU backend JIT-builds a
    communication op on its first use, minutes on a fresh machine, which a unit test should
    not pay for a forward pass it does not change."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.device = module, torch.device("cpu")

    def __call__(self, tokens: torch.Tensor):
        return self.module(tokens)


class _ValidationShard:
    """The part of a Ray Data shard the loop's validation reads: ``iter_torch_batches``,
    whose last batch is partial (no drop_last there)."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def iter_torch_batches(self, batch_size: int, device):
        for i in range(0, len(self.tokens), batch_size):
            yield {"tokens": torch.from_numpy(self.tokens[i : i + batch_size]).to(device)}


class _Manifest:
    """The part of a dataset manifest publishing reads for a language model."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def load_tokens(self, split: str) -> np.ndarray:
        assert split == "test"
        return self.tokens


def _python_source_rows(rows: int) -> np.ndarray:
    """(rows, BLOCK + 1) byte tokens of real Python source, as ingest cuts them."""
    data = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_bytes()
    width = BLOCK + 1
    return np.frombuffer(data[: rows * width], dtype=np.uint8).astype(np.int64).reshape(rows, width)


def test_validation_loss_and_published_test_loss_agree_on_the_same_rows(
    tmp_path: Path, one_rank_process_group
):
    cfg = preset("gpt_tiny")
    torch.manual_seed(0)
    model = build_model(cfg.architecture, **cfg.model_options)
    # A fresh model scores about ln 256 on every row, which would hide a difference in how
    # rows and batches are averaged; larger tied embeddings make its logits peaked, so the
    # rows' losses differ widely.
    with torch.no_grad():
        model.wte.weight.mul_(20.0)
    engine = _Engine(model)
    # 37 rows: the loop's batches of 16 end with a partial one, publishing's of 32 too.
    tokens = _python_source_rows(37)

    loop = LoopConfig(train=cfg, steps_per_epoch=1, tracking_uri="", artifact_root="")
    val = Task(loop, torch.float32).validate(engine, _ValidationShard(tokens))
    folder = tmp_path / "model"
    folder.mkdir()
    published = write_package(
        engine.module, cfg.architecture, cfg.model_options, _Manifest(tokens), folder
    )

    assert published["tokens"] == tokens[:, 1:].size
    assert val["val_loss"] == pytest.approx(published["loss"], rel=1e-5)
    assert val["val_perplexity"] == pytest.approx(published["perplexity"], rel=1e-4)
    # The rows are unlike each other: averaging per batch instead of per token would differ.
    with torch.no_grad():
        logits, _ = engine.module(torch.from_numpy(tokens[:, :-1]))
        per_row = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), torch.from_numpy(tokens[:, 1:]), reduction="none"
        ).mean(1)
    batch_means = [per_row[i : i + 16].mean().item() for i in range(0, len(per_row), 16)]
    assert abs(np.mean(batch_means) - published["loss"]) > 1e-3
