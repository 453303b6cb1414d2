"""Post-training int8 quantization of ONNX models with ONNX Runtime's quantization tools.

Dynamic quantization stores weights as int8 and quantizes activations on the fly, per
batch: no data needed. Static quantization fixes activation ranges ahead of time from
calibration rows, in QDQ format (QuantizeLinear/DequantizeLinear pairs that ORT's CPU
kernels fuse into integer ops). Both first run ORT's recommended pre-processing (symbolic
shape inference and graph optimisation), which lets more ops be quantized.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from models.exceptions import ModelError
from models.onnx_export import INPUT_NAME


class _Batches(CalibrationDataReader):
    """Feeds calibration rows to ORT's calibrator in batches of ``batch_size``."""

    def __init__(self, rows: np.ndarray, batch_size: int) -> None:
        self._batches = iter(np.array_split(rows, max(1, -(-len(rows) // batch_size))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def _pre_process(src: Path, folder: Path) -> Path:
    out = folder / "pre.onnx"
    quant_pre_process(str(src), str(out))
    return out


# Dynamic quantization pays off on matrix products only: quantizing convolutions as well
# turned them into ConvInteger, measured 6x slower than fp32 here (the digits CNN).
DYNAMIC_OPS = ["MatMul", "Gemm"]


def quantize_dynamic_int8(src: Path, dst: Path) -> Path:
    """Write ``src`` (fp32 ONNX) to ``dst`` with int8 MatMul/Gemm weights and dynamically
    quantized activations (uint8, the only kind ORT's dynamic mode supports). Returns ``dst``."""
    with tempfile.TemporaryDirectory(prefix="aimass-quant-") as tmp:
        quantize_dynamic(
            _pre_process(Path(src), Path(tmp)),
            dst,
            op_types_to_quantize=DYNAMIC_OPS,
            weight_type=QuantType.QInt8,
        )
    return Path(dst)


def quantize_static_int8(
    src: Path,
    dst: Path,
    calibration: np.ndarray,
    batch_size: int = 32,
    *,
    per_channel: bool = True,
) -> Path:
    """Write ``src`` (fp32 ONNX) to ``dst`` as a static int8 QDQ model. Returns ``dst``.

    Activation ranges come from running ``calibration`` through the model (min/max). Int8
    weights and uint8 activations are ORT's advice for x86 CPUs (signed activations would
    saturate the u8 x s8 instructions without VNNI).

    Args:
        src: The fp32 ONNX model.
        dst: Where to write the quantized model.
        calibration: (N, *input_shape) float32 rows, drawn from the training data (a few
            hundred suffice); never the test split.
        batch_size: Rows per calibration run.
        per_channel: One weight scale per output channel: costs little, keeps accuracy.
    """
    if len(calibration) == 0:
        raise ModelError("quantize_static_int8 needs calibration rows; pass some training rows.")
    rows = np.ascontiguousarray(calibration, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="aimass-quant-") as tmp:
        quantize_static(
            _pre_process(Path(src), Path(tmp)),
            dst,
            _Batches(rows, batch_size),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
        )
    return Path(dst)
