"""The model zoo: builds a model from its architecture name and keyword options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from models import digits, digits_transformer, gpt
from models.exceptions import ModelError
from models.signature import CLASSIFY, LM, Signature


@dataclass(frozen=True, slots=True)
class Architecture:
    build: Callable[..., nn.Module]
    signature: Signature | Callable[..., Signature]
    """The signature, or a function of the constructor's options returning it."""
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Batch augmentation applied to training inputs, when the architecture has one."""
    task: str = CLASSIFY

    def signature_for(self, options: dict) -> Signature:
        return (
            self.signature if isinstance(self.signature, Signature) else self.signature(**options)
        )


def _gpt(preset: str = "tiny", **overrides) -> nn.Module:
    return gpt.GPT(gpt.gpt_config(preset, **overrides))


def _gpt_signature(preset: str = "tiny", **overrides) -> Signature:
    cfg = gpt.gpt_config(preset, **overrides)
    return Signature(input_shape=(cfg.block_size,), num_classes=cfg.vocab_size, input_dtype="int64")


def _ensemble(**_options) -> nn.Module:
    raise ModelError(
        "An ensemble has no torch module: its ONNX graph combines its members' graphs "
        "(models.ensemble, made by jobs.ensemble).",
        architecture="ensemble",
    )


def _ensemble_signature(input_shape, num_classes: int, **_options) -> Signature:
    return Signature(input_shape=tuple(input_shape), num_classes=int(num_classes))


ARCHITECTURES: dict[str, Architecture] = {
    "digits_cnn": Architecture(
        build=digits.DigitsCNN,
        signature=Signature(input_shape=(digits.NUM_FEATURES,), num_classes=digits.NUM_CLASSES),
        augment=digits.random_shift,
    ),
    # No augmentation: pixel shifts held it at ~58 % test accuracy in 30 epochs (94 % without).
    "digits_transformer": Architecture(
        build=digits_transformer.DigitsTransformer,
        signature=Signature(input_shape=(digits.NUM_FEATURES,), num_classes=digits.NUM_CLASSES),
    ),
    # Options: {"preset": "tiny" | "small" | "125m" | ..., plus GPTConfig field overrides}.
    "gpt": Architecture(build=_gpt, signature=_gpt_signature, task=LM),
    # Options: {"members": ["digits@3", ...], "rule", "weights", "input_shape", "num_classes"}.
    "ensemble": Architecture(build=_ensemble, signature=_ensemble_signature),
}


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelError(
            f"Unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}.",
            architecture=name,
        ) from None


def build_model(name: str, **options) -> nn.Module:
    """A freshly initialised model of architecture ``name``."""
    return architecture(name).build(**options)
