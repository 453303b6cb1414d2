"""KV caches in pipeline stages, without Ray: stage actors' plain classes run in order by an
in-process group, behind the real ``StagedGPT`` and the Generator's ``DecodeBatch``."""

from __future__ import annotations

import pytest
import torch
from ray.exceptions import RayActorError

from actors.pipeline import (
    PackageSource,
    PipelineConfig,
    PipelineStage,
    StagedGPT,
    build_stage,
    plan_stages,
)
from models import package
from models.exceptions import CacheLost
from models.gpt import GPT, GPTConfig
from models.weights import save_weights
from serve_apps._private.decode_batch import DecodeBatch, Row

CFG = GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=32)


class LocalGroup:
    """``StageGroup``'s calls, run in this process: each stage a ``PipelineStage`` object.
    ``fail_next`` makes the next forward fail as a killed stage does (RayActorError)."""

    def __init__(self, weights, parts: int, max_caches: int = 64) -> None:
        self.weights, self.cfg = weights, CFG
        self.config = PipelineConfig(num_stages=parts, max_caches=max_caches)
        self.source = PackageSource("-", "-", "lm", 1)
        self.plan = plan_stages(GPT(CFG), self.config)
        self.generation, self.fail_next, self.restarts = 0, False, 0
        self.restart(0)
        self.restarts = 0

    def _stage(self, spec) -> PipelineStage:
        stage = PipelineStage(self.source, CFG, spec, max_caches=self.config.max_caches)
        stage.module = build_stage(CFG, spec, self.weights)
        return stage

    def submit_cached(self, key, idx, start):
        if self.fail_next:
            self.fail_next = False
            return RayActorError(), self.generation
        x = idx
        try:
            for stage in self.stages:
                x = stage.forward_cached(key, x, start)
        except CacheLost as err:
            return err, self.generation
        return x, self.generation

    def wait(self, ref):
        if isinstance(ref, BaseException):
            raise ref
        return ref

    def restart(self, failed_generation: int) -> None:
        if failed_generation == self.generation:  # every cache goes with the old stages
            self.stages = [self._stage(spec) for spec in self.plan]
            self.generation += 1
            self.restarts += 1

    def cache_op(self, generation, method, *args) -> None:
        if generation == self.generation:
            for stage in self.stages:
                getattr(stage, method)(*args)


@pytest.fixture
def gpt(tmp_path) -> GPT:
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    save_weights(model, tmp_path / package.WEIGHTS_FILE)
    return model


def staged(gpt: GPT, tmp_path, parts: int = 2, **options) -> StagedGPT:
    return StagedGPT(LocalGroup(tmp_path / package.WEIGHTS_FILE, parts, **options))


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_cached_stages_give_the_logits_and_greedy_tokens_of_the_whole_gpt(gpt, tmp_path, parts):
    model = staged(gpt, tmp_path, parts)
    idx = torch.randint(0, CFG.vocab_size, (2, 5))
    with torch.no_grad():
        mine, theirs = model.new_cache(2), gpt.new_cache(2)
        for step in (idx, idx[:, -1:], idx[:, :1]):  # a prefill, then two single tokens
            got, expected = model.forward_cached(step, mine), gpt.forward_cached(step, theirs)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        # Greedy (top_k 1) through the window slide at block_size: the same tokens.
        assert torch.equal(model.generate(idx, 40, top_k=1), gpt.generate(idx, 40, top_k=1))


def test_a_stage_refuses_a_cache_it_does_not_hold_and_keeps_a_bounded_number(gpt, tmp_path):
    model = staged(gpt, tmp_path, max_caches=2)
    first = model.group.stages[0]
    x = torch.tensor([[1, 2, 3]])
    for key in ("a", "b", "c"):
        first.forward_cached(key, x, [0])
    assert first.cache_keys() == ["b", "c"]  # "a", the least recently used, was dropped
    with pytest.raises(CacheLost, match="no cache a at positions \\[3\\]"):
        first.forward_cached("a", x[:, -1:], [3])
    with pytest.raises(CacheLost, match="it holds \\[3\\]"):
        first.forward_cached("b", x[:, -1:], [5])  # not where the caller thinks it is
    first.cache_free(["b", "c"])
    assert first.cache_keys() == []


def rows(prompts: list[list[int]], tokens: int) -> list[Row]:
    return [Row(list(p), tokens, 1.0, 1, torch.Generator()) for p in prompts]  # top_k 1


def decode(batch: DecodeBatch, joining: list[Row], fail_at: int | None = None) -> None:
    step = 0
    while batch.rows or joining:
        if step == fail_at:
            batch.model.group.fail_next = True
        batch.step(joining)
        joining, step = [], step + 1


def test_a_decode_batch_over_stages_and_a_restart_mid_stream_give_the_gpts_tokens(gpt, tmp_path):
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6], [9]]
    expected = [gpt.generate(torch.tensor([p]), 12, top_k=1)[0].tolist() for p in prompts]
    model = staged(gpt, tmp_path)
    batch = DecodeBatch(model)
    with torch.no_grad():
        first = rows(prompts[:2], 12)
        batch.step(first)
        late = rows(prompts[2:], 12)
        batch.step(late)  # joins a running batch: the stages' caches are concatenated
        # A stage dies at the next decode step: the group restarts, the rows prefill again.
        decode(batch, [], fail_at=0)
    assert model.group.restarts == 1
    assert [r.context for r in first + late] == expected
    del first, late
    assert all(stage.cache_keys() == [] for stage in model.group.stages)  # freed as they left


def test_a_prefill_that_meets_a_dead_stage_is_retried_on_the_restarted_group(gpt, tmp_path):
    model = staged(gpt, tmp_path)
    model.group.fail_next = True
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        got = model.forward_cached(idx, model.new_cache(1))
        expected = gpt.forward_cached(idx, gpt.new_cache(1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert model.group.restarts == 1


def test_a_cache_from_before_a_restart_is_lost_not_made_up(gpt, tmp_path):
    model = staged(gpt, tmp_path)
    cache = model.new_cache(1)
    with torch.no_grad():
        model.forward_cached(torch.tensor([[1, 2]]), cache)
        model.group.restart(model.group.generation)
        with pytest.raises(CacheLost, match="restarted since its prefill"):
            model.forward_cached(torch.tensor([[3]]), cache)
