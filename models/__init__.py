"""The model library that jobs, actors and Serve applications share.

Light modules (no torch, MLflow or ONNX Runtime; the gateway imports them): ``refs`` (names,
references, aliases, lineage tags), ``signature`` (what a model takes and returns, its
task), ``exceptions``, ``package`` (a version's files and their SHA-256 manifest).

Heavy ones: ``zoo`` (architectures: ``digits``, ``digits_transformer``, ``gpt``), ``weights``
(safetensors), ``onnx_export``, ``compression``, ``evaluation`` (metrics), ``dataset`` (Parquet
shards and their manifest), ``registry`` (MLflow, with ``alias_events`` recording alias moves
and ``lineage`` comparing two versions).
"""

__all__ = [
    "alias_events",
    "compression",
    "dataset",
    "digits",
    "digits_transformer",
    "evaluation",
    "exceptions",
    "gpt",
    "lineage",
    "onnx_export",
    "package",
    "refs",
    "registry",
    "signature",
    "weights",
    "zoo",
]
