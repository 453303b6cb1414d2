"""Export a torch model to ONNX and prove that ONNX Runtime computes the same thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from models.exceptions import ParityError
from models.signature import INPUT_NAME, OUTPUT_NAME  # the graph's tensor names

PARITY_ATOL = 1e-4


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, dynamic_sequence: bool = False
) -> Path:
    """Write ``model`` as ONNX with a dynamic batch dimension (and sequence length, for
    token models: ``dynamic_sequence``).

    The TorchScript-based exporter (``dynamo=False``) is used on purpose: it needs no
    extra dependency (onnxscript) and handles these architectures exactly.
    """
    model = model.eval()
    axes = {0: "batch", 1: "sequence"} if dynamic_sequence else {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=17,
        )
    return path


def cpu_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session; ``threads=0`` lets ORT pick."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=available_providers())


def available_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu sees a GPU, CPU always as the fallback."""
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in ort.get_available_providers()]


def check_parity(model: nn.Module, path: Path, inputs: torch.Tensor) -> float:
    """Max |torch - onnxruntime| over ``inputs``; raise ParityError above ``PARITY_ATOL``."""
    with torch.no_grad():
        expected = model.eval()(inputs).numpy()
    got = cpu_session(path).run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
    diff = float(np.max(np.abs(expected - got)))
    if diff > PARITY_ATOL:
        raise ParityError(
            f"ONNX output differs from torch by {diff:.2e} (> {PARITY_ATOL:.0e}).",
            path=str(path),
        )
    return diff
