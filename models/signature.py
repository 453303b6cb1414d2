"""What a model takes and returns, and its task: plain data, free of torch (the gateway and
the registry's readers import it)."""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFY = "classify"
LM = "lm"
"""Tasks: a classifier (features -> class logits) or a language model (tokens -> next-token
logits). The task decides the training loss, the validation metric and the gates."""

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
"""The tensor names of every exported ONNX graph (what the Open Inference Protocol's
metadata shows as the model's input)."""


@dataclass(frozen=True, slots=True)
class Signature:
    """What a model takes and returns: served requests are validated against it.

    A classifier takes ``input_shape`` floats and returns ``num_classes`` logits; a language
    model takes up to ``input_shape[0]`` int64 tokens and returns logits over ``num_classes``
    (its vocabulary) per position.
    """

    input_shape: tuple[int, ...]  # per instance, batch dimension excluded
    num_classes: int
    input_dtype: str = "float32"

    def to_dict(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "input_dtype": self.input_dtype,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Signature:
        return cls(
            input_shape=tuple(data["input_shape"]),
            num_classes=int(data["num_classes"]),
            input_dtype=data.get("input_dtype", "float32"),
        )
