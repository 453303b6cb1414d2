"""The language-model task: presets, gates, metrics and the data check before training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs._private.train_loop import lm_loss
from jobs.configs import PRESETS, preset
from jobs.train import check_data
from models.evaluation import language_model_metrics, next_token_nats
from models.gpt import GPT_PRESETS


def test_every_preset_builds_and_gpt_presets_are_language_models():
    for name, make in PRESETS.items():
        cfg = make()
        assert cfg.name == name
        expected = "lm" if name.startswith("gpt_") else "classify"
        assert cfg.task == expected
    assert preset("gpt_tiny").objective() == ("val_loss", "min")
    assert preset("digits_cnn").objective() == ("val_accuracy", "max")
    assert preset("gpt_1b3").model_options["preset"] in GPT_PRESETS
    assert preset("gpt_tiny_offload").zero_stage == 3


def test_champion_gates_by_task():
    lm_gate = preset("gpt_tiny").champion_gate()
    assert lm_gate.metric == "loss" and lm_gate.passes(2.0) and not lm_gate.passes(3.0)
    cls_gate = preset("digits_cnn").champion_gate()
    assert cls_gate.metric == "accuracy" and cls_gate.passes(0.99) and not cls_gate.passes(0.5)


def test_the_loss_metric_is_the_training_objective_summed_over_batches():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(3, 5, 256)).astype(np.float32)
    targets = rng.integers(0, 256, size=(3, 5))
    # Rows 0-1 and row 2 as two batches of unequal size: sums add up, means would not.
    first, second = (
        next_token_nats(logits[:2], targets[:2]),
        next_token_nats(logits[2:], targets[2:]),
    )
    got = language_model_metrics(first[0] + second[0], first[1] + second[1])
    expected = lm_loss(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    assert got["loss"] == pytest.approx(expected, rel=1e-5)
    assert got["perplexity"] == pytest.approx(np.exp(expected), rel=1e-5)
    assert got["tokens"] == 15


class _Manifest:
    def __init__(self, data: dict) -> None:
        self.data = data


def test_data_that_cannot_feed_the_model_fails_before_training():
    with pytest.raises(SystemExit, match="holds no token sequences"):
        check_data(preset("gpt_tiny"), _Manifest({"num_classes": 10}))
    with pytest.raises(SystemExit, match="Ingest with --block-size 128"):
        check_data(preset("gpt_tiny"), _Manifest({"block_size": 512}))
    with pytest.raises(SystemExit, match="is a classifier"):
        check_data(preset("digits_cnn"), _Manifest({"block_size": 128}))
    check_data(preset("gpt_tiny"), _Manifest({"block_size": 128}))  # fits: no error
