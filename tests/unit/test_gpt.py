import pytest
import torch

from models.gpt import GPT, GPT_PRESETS, GPTConfig, decode, encode, gpt_config


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
