import pytest
import torch

from models.gpt import (
    GPT,
    GPT_PRESETS,
    GPTConfig,
    KVCache,
    decode,
    encode,
    gpt_config,
    run_blocks,
    sample,
)


def test_tiny_preset_is_under_a_million_parameters_and_the_formula_is_exact():
    model = GPT(gpt_config("tiny"))
    counted = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert counted == GPT_PRESETS["tiny"].num_params < 1_000_000


@pytest.mark.parametrize(("preset", "billions"), [("125m", 0.124), ("350m", 0.355), ("1.3b", 1.3)])
def test_presets_have_the_gpt_shapes_their_names_come_from(preset, billions):
    # The names count parameters with GPT-2's 50,257-token vocabulary; with bytes
    # (vocab 256) the same shapes are smaller, e.g. "125m" has 86 M parameters.
    gpt2_vocab = gpt_config(preset, vocab_size=50257)
    assert gpt2_vocab.num_params / 1e9 == pytest.approx(billions, rel=0.05)


def test_logits_loss_and_weight_tying():
    model = GPT(gpt_config("tiny"))
    idx, targets = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 16, 256)
    assert loss.item() == pytest.approx(5.55, abs=0.3)  # untrained: about ln 256
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


def test_attention_is_causal():
    model = GPT(gpt_config("tiny")).eval()
    a = torch.randint(0, 256, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 256  # change only the future
    assert torch.allclose(model(a)[0][:, :8], model(b)[0][:, :8], atol=1e-6)
    assert not torch.allclose(model(a)[0][:, 8:], model(b)[0][:, 8:])


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = GPT(gpt_config("tiny"))
    ckpt = GPT(gpt_config("tiny", activation_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 256, (2, 16))
    for m in (plain, ckpt):
        m(idx, idx)[1].backward()
    for p, q in zip(plain.parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_generate_extends_the_prompt_within_the_vocabulary():
    model = GPT(gpt_config("tiny")).eval()
    prompt = torch.tensor([encode("def ")])
    out = model.generate(prompt, 10, top_k=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 14) and out[0, :4].tolist() == encode("def ")
    assert isinstance(decode(out[0].tolist()), str)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=65, n_head=2)
    with pytest.raises(ValueError, match="block_size"):
        GPT(gpt_config("tiny"))(torch.zeros(1, 65, dtype=torch.long))


@pytest.fixture
def small() -> GPT:
    torch.manual_seed(0)
    return GPT(gpt_config("small", block_size=48)).eval()


def test_cached_logits_equal_the_full_forward(small):
    idx = torch.randint(0, 256, (2, 40))
    cache = small.new_cache(2)
    with torch.no_grad():
        prefill = small.forward_cached(idx[:, :10], cache)  # then one token at a time
        steps = [small.forward_cached(idx[:, i : i + 1], cache) for i in range(10, 40)]
        full = small(idx)[0]
    assert torch.allclose(torch.cat([prefill, *steps], dim=1), full, atol=1e-5)
    assert cache.lengths.tolist() == [40, 40]


@pytest.mark.parametrize("sampling", [{"top_k": 1}, {"temperature": 0.9, "top_k": 40}])
def test_cached_generation_gives_the_tokens_of_the_uncached_path(small, sampling):
    prompt = torch.tensor([encode("def main(")])
    cached, uncached = (
        small.generate(
            prompt, 30, generator=torch.Generator().manual_seed(3), kv_cache=kv, **sampling
        )
        for kv in (True, False)
    )
    assert torch.equal(cached, uncached)


def test_past_block_size_the_window_slides_as_in_the_uncached_path(small):
    prompt = torch.randint(0, 256, (1, 30))  # 30 + 40 tokens: 22 past block_size 48
    cached = small.generate(prompt, 40, top_k=1, kv_cache=True)
    assert torch.equal(cached, small.generate(prompt, 40, top_k=1, kv_cache=False))
    long_prompt = torch.randint(0, 256, (1, 100))  # cut to its last 48 tokens
    new = small.generate(long_prompt, 5, top_k=1)[:, 100:]
    assert torch.equal(new, small.generate(long_prompt[:, -48:], 5, top_k=1)[:, 48:])


def test_rows_of_different_lengths_decode_together_as_each_alone(small):
    prompts = [torch.randint(0, 256, (1, n)) for n in (3, 17, 9)]
    caches, logits = [], []
    with torch.no_grad():
        for p in prompts:  # each prefilled alone, then batched
            caches.append(small.new_cache(1))
            logits.append(small.forward_cached(p, caches[-1])[:, -1])
        batch = KVCache.cat(caches)
        alone = [c.select([0]) for c in caches]  # copies: the batch does not touch them
        tokens = [[int(z.argmax())] for z in logits]
        for _ in range(12):
            batched = small.forward_cached(torch.tensor([t[-1:] for t in tokens]), batch)[:, -1]
            for row, t in enumerate(tokens):
                one = small.forward_cached(torch.tensor([t[-1:]]), alone[row])[:, -1]
                assert torch.allclose(batched[row], one[0], atol=1e-5)
                t.append(int(batched[row].argmax()))
    assert batch.lengths.tolist() == [3 + 12, 17 + 12, 9 + 12]
    kept = batch.select([2, 0])  # a row leaves; the others keep their positions
    assert kept.lengths.tolist() == [21, 15]


def test_a_range_of_blocks_runs_with_its_own_cache_as_a_pipeline_stage_would(small):
    idx = torch.randint(0, 256, (1, 12))
    first, second = KVCache.empty(small.cfg, 1, 2), KVCache.empty(small.cfg, 1, 2)
    with torch.no_grad():
        x = small.embed(idx, first.lengths)
        x = run_blocks(small.blocks[2:], run_blocks(small.blocks[:2], x, first), second)
        assert torch.allclose(small.head(x), small(idx)[0], atol=1e-5)
        with pytest.raises(ValueError, match="2 layers for 4 blocks"):
            run_blocks(small.blocks, x, first)
        with pytest.raises(ValueError, match="exceed the cache's 48"):
            run_blocks(small.blocks[:2], torch.zeros(1, 40, 128), first)


def test_nucleus_sampling_keeps_the_fewest_tokens_that_reach_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    rng = torch.Generator().manual_seed(0)

    def drawn(top_p: float | None) -> set[int]:
        return {int(sample(logits, 1.0, None, rng, top_p)) for _ in range(400)}

    assert drawn(0.75) == {0, 1}  # 0.5 + 0.3 reach 0.75
    assert drawn(0.5) == {0}  # the most likely alone reaches it
    assert drawn(0.01) == {0}  # never empty
    assert drawn(None) == drawn(1.0) == {0, 1, 2, 3}
