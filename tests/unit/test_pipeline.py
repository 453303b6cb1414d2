"""Pipeline stages without Ray: config checks, split planning, budgets and the stage math."""

from __future__ import annotations

import itertools
import pickle

import pydantic
import pytest
import torch

from actors.exceptions import InvalidSplit, StageOverBudget
from actors.pipeline import (
    PackageSource,
    PipelineConfig,
    PipelineStage,
    build_stage,
    plan_stages,
    stage_name,
)
from models import package
from models.exceptions import ArtifactIntegrityError
from models.gpt import GPT, GPTConfig
from models.registry import Registry
from models.weights import save_weights

F32 = 4


def meta_gpt(**options) -> GPT:
    with torch.device("meta"):
        return GPT(GPTConfig(**options))


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"num_stages": 3, "split_points": [2]}, "3 stages need 2"),
        ({"num_stages": 2, "datacenters": ["us-east"]}, "one per stage"),
        ({"num_stages": 1, "datacenters": ["us east"]}, "label value"),
        ({"num_stages": 0}, "num_stages"),
        ({"stage_memory_bytes": 0}, "stage_memory_bytes"),
        ({"strategy": "ANYWHERE"}, "strategy"),
        ({"stages": 2}, "stages"),
    ],
)
def test_a_bad_config_names_the_field_and_the_fix(fields, says):
    with pytest.raises(pydantic.ValidationError, match=says):
        PipelineConfig(**fields)


def test_stage_0_holds_the_embeddings_the_last_the_head_and_layers_are_contiguous():
    plan = plan_stages(meta_gpt(n_layer=6, n_embd=64, n_head=2), PipelineConfig(num_stages=3))
    assert [s.layers for s in plan] == [(0, 2), (2, 4), (4, 6)]
    first, middle, last = (set(s.tensors) for s in plan)
    assert {"wte.weight", "wpe.weight"} <= first and not first & {"ln_f.weight", "lm_head.weight"}
    assert {"ln_f.weight", "lm_head.weight"} <= last and "wte.weight" not in last
    assert all(n.startswith(("blocks.2.", "blocks.3.")) for n in middle)


def test_the_default_split_minimises_the_largest_stage():
    # A long context makes wpe heavy: stage 0 should take fewer blocks.
    model = meta_gpt(n_layer=7, n_embd=32, n_head=2, block_size=2048, vocab_size=256)
    for parts in (2, 3, 4):
        plan = plan_stages(model, PipelineConfig(num_stages=parts))
        best = min(
            max(
                s.param_bytes
                for s in plan_stages(model, PipelineConfig(num_stages=parts, split_points=points))
            )
            for points in itertools.combinations(range(1, 7), parts - 1)
        )
        assert max(s.param_bytes for s in plan) == best
    assert plan_stages(model, PipelineConfig(num_stages=2))[0].layers[1] < 4


def test_a_tied_matrix_counts_once_in_one_stage_and_in_both_end_stages_when_split():
    cfg = GPTConfig(n_layer=4, n_embd=64, n_head=2)
    (whole,) = plan_stages(meta_gpt(n_layer=4, n_embd=64, n_head=2), PipelineConfig(num_stages=1))
    assert whole.param_bytes == cfg.num_params * F32
    split = plan_stages(meta_gpt(n_layer=4, n_embd=64, n_head=2), PipelineConfig(num_stages=2))
    assert sum(s.param_bytes for s in split) == (cfg.num_params + cfg.vocab_size * 64) * F32


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"num_stages": 5}, "at most 4 stages"),
        ({"num_stages": 2, "split_points": [4]}, "increase strictly"),
        ({"num_stages": 3, "split_points": [2, 2]}, "increase strictly"),
    ],
)
def test_a_split_that_does_not_fit_the_model_is_refused(fields, says):
    with pytest.raises(InvalidSplit, match=says) as err:
        plan_stages(meta_gpt(n_layer=4), PipelineConfig(**fields), name="lm", version=2)
    assert (err.value.model, err.value.version) == ("lm", "2")


def test_explicit_split_points_are_kept():
    plan = plan_stages(meta_gpt(n_layer=4), PipelineConfig(num_stages=2, split_points=[1]))
    assert [s.layers for s in plan] == [(0, 1), (1, 4)]


def test_a_stage_over_budget_is_refused_naming_stage_bytes_and_budget():
    model = meta_gpt(n_layer=4, n_embd=64, n_head=2)
    whole = plan_stages(model, PipelineConfig(num_stages=1))[0].param_bytes
    budget = whole * 2 // 3
    with pytest.raises(StageOverBudget) as err:
        plan_stages(model, PipelineConfig(num_stages=1, stage_memory_bytes=budget), name="lm")
    message = str(err.value)
    assert "Stage 1/1" in message and f"{whole:,}" in message and f"{budget:,}" in message
    assert "num_stages" in message
    again = pickle.loads(pickle.dumps(err.value))  # as Ray sends it to the caller
    assert (type(again), again.stage, again.model, str(again)) == (
        StageOverBudget,
        "1/1",
        "lm",
        message,
    )
    plan = plan_stages(model, PipelineConfig(num_stages=2, stage_memory_bytes=budget))
    assert all(s.param_bytes <= budget for s in plan)


def test_stage_names_say_what_they_hold():
    plan = plan_stages(meta_gpt(n_layer=2), PipelineConfig(num_stages=2))
    assert stage_name("lm", 3, plan[0]) == "stage:lm:3:1of2"
    assert stage_name("lm", 3, plan[1], "eu-west") == "stage:lm:3:2of2:eu-west"


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_stages_run_one_after_another_equal_the_whole_model(tmp_path, parts):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16)
    model = GPT(cfg).eval()
    save_weights(model, tmp_path / package.WEIGHTS_FILE)
    plan = plan_stages(model, PipelineConfig(num_stages=parts))
    stages = [build_stage(cfg, spec, tmp_path / package.WEIGHTS_FILE) for spec in plan]
    idx = torch.randint(0, cfg.vocab_size, (3, 16))
    x = idx
    with torch.no_grad():
        for stage in stages:
            x = stage(x)
        expected = model(idx)[0]
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    for stage, spec in zip(stages, plan, strict=True):
        assert set(stage.state_dict()) == set(spec.tensors)  # its slice, nothing else
        assert stage.param_bytes() == spec.param_bytes


def test_a_stage_loads_its_verified_slice_from_the_registry(registry, register_gpt):
    info, model = register_gpt(registry, "lm", n_layer=4)
    plan = plan_stages(model, PipelineConfig(num_stages=2))
    source = PackageSource(registry.tracking_uri, registry.artifact_root, "lm", info.version)
    stages = [PipelineStage(source, model.cfg, spec) for spec in plan]
    assert [s.load() for s in stages] == [s.param_bytes for s in plan]
    idx = torch.randint(0, 256, (2, 10))
    x = idx
    for stage in stages:
        x = stage.forward(x)
    with torch.no_grad():
        torch.testing.assert_close(x, model(idx)[0], rtol=0, atol=1e-6)


def test_a_stage_refuses_weights_whose_sha256_differs(registry, register_gpt, tmp_path):
    info, model = register_gpt(registry, "lm", n_layer=2)
    stored = next((tmp_path / "artifacts").rglob(package.WEIGHTS_FILE))
    stored.write_bytes(stored.read_bytes()[:-8] + b"\0" * 8)
    (spec,) = plan_stages(model, PipelineConfig(num_stages=1))
    source = PackageSource(registry.tracking_uri, registry.artifact_root, "lm", info.version)
    with pytest.raises(ArtifactIntegrityError, match="SHA-256"):
        PipelineStage(source, model.cfg, spec).load()


def test_a_stage_checks_its_budget_again_once_loaded(registry, register_gpt):
    info, model = register_gpt(registry, "lm", n_layer=2)
    (spec,) = plan_stages(model, PipelineConfig(num_stages=1))
    source = PackageSource(registry.tracking_uri, registry.artifact_root, "lm", info.version)
    with pytest.raises(StageOverBudget, match="over its budget"):
        PipelineStage(source, model.cfg, spec, budget_bytes=spec.param_bytes - 1).load()
