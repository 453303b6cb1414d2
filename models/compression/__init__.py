"""Model compression: pruning (unstructured and structured), int8 quantization, latency."""

from models.compression.latency import LatencyStats, file_size_bytes, onnx_latency, torch_latency
from models.compression.prune import (
    apply_magnitude_pruning,
    fine_tune,
    make_pruning_permanent,
    structured_prune,
    weight_sparsity,
)
from models.compression.quantize import quantize_dynamic_int8, quantize_static_int8

__all__ = [
    "LatencyStats",
    "apply_magnitude_pruning",
    "file_size_bytes",
    "fine_tune",
    "make_pruning_permanent",
    "onnx_latency",
    "quantize_dynamic_int8",
    "quantize_static_int8",
    "structured_prune",
    "torch_latency",
    "weight_sparsity",
]
