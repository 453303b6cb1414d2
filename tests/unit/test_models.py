import pickle

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from models.digits import DigitsCNN, random_shift
from models.evaluation import classification_metrics, confusion, softmax
from models.exceptions import ParityError
from models.onnx_export import check_parity, export_onnx
from models.weights import load_weights, save_weights
from models.zoo import build_model


def test_digits_cnn_maps_pixels_to_class_logits():
    model = DigitsCNN().eval()
    assert model(torch.rand(5, 64) * 16).shape == (5, 10)


def test_random_shift_moves_pixels_without_changing_their_sum():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 64)
    shifted = random_shift(x, torch.Generator().manual_seed(3))
    assert shifted.shape == (1, 64) and shifted.sum() == x.sum()


def test_onnx_export_matches_torch(tmp_path):
    model = build_model("digits_cnn").eval()
    path = export_onnx(model, torch.rand(2, 64) * 16, tmp_path / "m.onnx")
    assert check_parity(model, path, torch.rand(64, 64) * 16) <= 1e-4


def test_parity_check_catches_a_different_model(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(build_model("digits_cnn"), torch.rand(2, 64), tmp_path / "m.onnx")
    with pytest.raises(ParityError, match="differs"):
        check_parity(build_model("digits_cnn"), path, torch.rand(8, 64) * 16)


def test_weights_round_trip_through_safetensors(tmp_path):
    a, b = build_model("digits_cnn"), build_model("digits_cnn")
    save_weights(a, tmp_path / "w.safetensors")
    load_weights(b, tmp_path / "w.safetensors")
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_checkpoint_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps(_Exploit(str(marker))))
    # safetensors reads the pickle's first 8 bytes as its header's length, and refuses it
    with pytest.raises(SafetensorError, match="header"):
        load_weights(build_model("digits_cnn"), evil)
    assert not marker.exists()


def test_metrics_of_perfect_and_known_predictions():
    y = np.array([0, 1, 2, 2])
    perfect = np.eye(3)[y]
    m = classification_metrics(y, perfect)
    assert m["accuracy"] == 1.0 and m["cohen_kappa"] == 1.0 and m["roc_auc_ovr"] == 1.0
    wrong_one = np.eye(3)[[0, 1, 2, 0]] * 0.9 + 0.1 / 3
    m = classification_metrics(y, wrong_one)
    assert m["accuracy"] == 0.75
    # per class F1: 2/3 (one false positive), 1, 2/3 (one miss)
    assert m["f1_macro"] == pytest.approx(7 / 9)
    assert confusion(y, wrong_one.argmax(1), 3) == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]


def test_softmax_rows_sum_to_one():
    p = softmax(np.array([[1000.0, 0.0], [1.0, 1.0]]))
    assert np.allclose(p.sum(1), 1) and np.isfinite(p).all()


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    from models.evaluation import expected_calibration_error

    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y, np.eye(2)[y]) == 0.0
    # always 90 % sure, right half the time: |0.5 - 0.9| = 0.4
    half_right = np.array([[0.9, 0.1]] * 4)
    assert expected_calibration_error(y, half_right) == pytest.approx(0.4)


def test_confusion_png_is_written(tmp_path):
    from models.evaluation import confusion_png

    confusion_png([[3, 1], [0, 4]], tmp_path / "c.png", "test")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
