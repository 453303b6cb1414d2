import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from models import compression
from models.exceptions import ModelError
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, check_parity, cpu_session, export_onnx
from models.zoo import build_model

SMALL = {
    "digits_cnn": {"channels": 8, "hidden": 32},
    "digits_transformer": {"d_model": 32, "layers": 2, "heads": 2},
}


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, (n, 64)).astype(np.float32)


def _small(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, **SMALL[arch]).eval()


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_magnitude_pruning_reaches_the_target_sparsity():
    model = compression.apply_magnitude_pruning(_small("digits_cnn"), 0.6)
    assert compression.weight_sparsity(model) == pytest.approx(0.6, abs=1e-3)
    # The target is absolute: pruning again to a higher one prunes further, not 70% of 40%.
    compression.apply_magnitude_pruning(model, 0.8)
    assert compression.weight_sparsity(model) == pytest.approx(0.8, abs=1e-3)


def test_magnitude_pruning_removes_the_smallest_weights():
    model = compression.apply_magnitude_pruning(_small("digits_cnn"), 0.5)
    weights = torch.cat(
        [m.weight_orig.flatten() for m in model.modules() if hasattr(m, "weight_orig")]
    )
    masks = torch.cat(
        [m.weight_mask.flatten() for m in model.modules() if hasattr(m, "weight_mask")]
    )
    assert weights[masks == 0].abs().max() <= weights[masks == 1].abs().min()


def test_fine_tune_trains_but_keeps_pruned_weights_at_zero():
    model = compression.apply_magnitude_pruning(_small("digits_cnn"), 0.7)
    zeros = {name: p == 0 for name, p in model.named_buffers() if name.endswith("_mask")}
    before = [m.weight.clone() for m in model.modules() if hasattr(m, "weight_mask")]
    x, y = _pixels(128), np.random.default_rng(1).integers(0, 10, 128)
    compression.fine_tune(model, x, y, epochs=2, lr=1e-2, batch_size=32)
    after = [m.weight for m in model.modules() if hasattr(m, "weight_mask")]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    for name, mask_zero in zeros.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert torch.all(module.weight[mask_zero] == 0)
    assert compression.weight_sparsity(model) == pytest.approx(0.7, abs=1e-3)


def test_make_pruning_permanent_leaves_plain_weights_with_the_zeros():
    model = compression.apply_magnitude_pruning(_small("digits_cnn"), 0.5)
    compression.make_pruning_permanent(model)
    assert not [n for n, _ in model.named_buffers() if n.endswith("_mask")]
    assert set(model.state_dict()) == set(_small("digits_cnn").state_dict())
    assert compression.weight_sparsity(model) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0])
def test_magnitude_pruning_rejects_a_bad_sparsity(sparsity):
    with pytest.raises(ModelError, match="sparsity"):
        compression.apply_magnitude_pruning(_small("digits_cnn"), sparsity)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_structured_prune_shrinks_the_model_which_still_runs_and_exports(arch, tmp_path):
    model = _small(arch)
    small, options = compression.structured_prune(arch, model, keep=0.5)
    assert _params(small) < 0.75 * _params(model)
    rebuilt = build_model(arch, **options)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in small.state_dict().items()
    }
    x = torch.from_numpy(_pixels(16))
    assert small(x).shape == (16, 10)
    path = export_onnx(small, x[:2], tmp_path / "small.onnx")
    assert check_parity(small, path, x) <= 1e-4


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_structured_prune_keeping_everything_computes_the_same_function(arch):
    model = _small(arch)
    same, _ = compression.structured_prune(arch, model, keep=1.0)
    x = torch.from_numpy(_pixels(16))
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x), rtol=1e-4, atol=1e-5)


def test_structured_prune_keeps_the_filters_with_the_largest_l1_norm():
    model = _small("digits_cnn")
    conv1 = model.features[0]
    strong = torch.tensor([1, 4, 6, 7])
    with torch.no_grad():
        conv1.weight[strong] *= 100
    small, options = compression.structured_prune("digits_cnn", model, keep=0.5)
    assert options["channels"] == 4
    torch.testing.assert_close(small.features[0].weight, conv1.weight[strong])


def test_structured_prune_honours_magnitude_masks():
    model = compression.apply_magnitude_pruning(_small("digits_transformer"), 0.5)
    small, _ = compression.structured_prune("digits_transformer", model, keep=1.0)
    plain = compression.make_pruning_permanent(model)
    x = torch.from_numpy(_pixels(8))
    with torch.no_grad():
        torch.testing.assert_close(small(x), plain(x), rtol=1e-4, atol=1e-5)


def test_structured_prune_refuses_an_unsupported_architecture_or_keep():
    with pytest.raises(ModelError, match="supports"):
        compression.structured_prune("resnet50", _small("digits_cnn"), keep=0.5)
    with pytest.raises(ModelError, match="keep"):
        compression.structured_prune("digits_cnn", _small("digits_cnn"), keep=0.0)
    with pytest.raises(ModelError, match="DigitsTransformer"):
        compression.structured_prune("digits_transformer", _small("digits_cnn"), keep=0.5)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, digits):
    """A digits CNN trained briefly (random weights give near-ties that any rounding
    flips), as fp32 ONNX."""
    x, y = digits
    torch.manual_seed(0)
    model = build_model("digits_cnn", channels=16, hidden=64)
    compression.fine_tune(model, x[:640], y[:640], epochs=3, lr=3e-3, batch_size=32)
    path = tmp_path_factory.mktemp("quant") / "fp32.onnx"
    return export_onnx(model, torch.from_numpy(x[:2]), path)


def _argmax(path, x: np.ndarray) -> np.ndarray:
    return cpu_session(path, threads=1).run([OUTPUT_NAME], {INPUT_NAME: x})[0].argmax(1)


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_quantization_shrinks_the_file_and_keeps_the_predictions(
    method, fp32_onnx, digits, tmp_path
):
    x, _ = digits
    dst = tmp_path / f"{method}.onnx"
    if method == "dynamic":
        out = compression.quantize_dynamic_int8(fp32_onnx, dst)
    else:
        out = compression.quantize_static_int8(fp32_onnx, dst, x[:256])
    assert out == dst
    assert compression.file_size_bytes(dst) < 0.5 * compression.file_size_bytes(fp32_onnx)
    held_out = x[1000:1400]
    assert (_argmax(dst, held_out) == _argmax(fp32_onnx, held_out)).mean() >= 0.95


def test_static_quantization_needs_calibration_rows(fp32_onnx, tmp_path):
    with pytest.raises(ModelError, match="calibration"):
        compression.quantize_static_int8(fp32_onnx, tmp_path / "q.onnx", np.empty((0, 64)))


def test_latency_helpers_measure_both_runtimes(fp32_onnx):
    model = _small("digits_cnn")
    for stats in (
        compression.onnx_latency(fp32_onnx, 4, iters=5, warmup=1),
        compression.torch_latency(model, 4, iters=5, warmup=1),
    ):
        assert stats.batch_size == 4
        assert 0 < stats.p50_ms <= stats.p99_ms
        assert stats.rows_per_s == pytest.approx(4 / stats.mean_ms * 1000)


def test_torch_latency_restores_the_thread_setting():
    before = torch.get_num_threads()
    compression.torch_latency(_small("digits_cnn"), 1, threads=1, iters=2, warmup=0)
    assert torch.get_num_threads() == before
