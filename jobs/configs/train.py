"""The training configuration and its presets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

from models.zoo import LM, architecture


@dataclass(kw_only=True, frozen=True, slots=True)
class TrainConfig:
    """One training run: model, data, DeepSpeed and the gate that makes a champion."""

    name: str
    """Run name: the Ray Train run folder and the MLflow run name."""
    architecture: str = "digits_cnn"
    """Model architecture from the zoo (``models.zoo.ARCHITECTURES``)."""
    model_options: dict = field(default_factory=dict)
    """Keyword options of the architecture's constructor."""
    dataset: str = "digits"
    """Dataset name under ``<storage>/datasets`` (written by ``jobs.ingest``)."""
    register_as: str = "digits"
    """Registered model name the trained version is added to."""
    num_workers: int = 2
    """Ray Train workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); CPU workers use gloo."""
    epochs: int = 30
    batch_size: int = 32
    """Micro-batch per worker; the global batch is batch_size x num_workers."""
    lr: float = 2e-3
    weight_decay: float = 1e-4
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3."""
    offload_optimizer: bool = False
    """ZeRO-Offload: optimizer state and step on the CPU (DeepSpeedCPUAdam); stage >= 1."""
    offload_params: bool = False
    """ZeRO-Infinity style: parameters live on the CPU between uses; stage 3 only."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (the global batch grows by this factor)."""
    grad_clip: float = 1.0
    """Gradient norm clip; 0 turns clipping off."""
    seed: int = 0
    augment: bool = True
    """Apply the architecture's training augmentation, if it has one."""
    cache_data: bool = True
    """Read the shards once and keep the blocks in Ray's object store across epochs (the
    cluster's memory, not the driver's). False streams from storage every epoch: for
    datasets larger than the cluster's object store."""
    checkpoint_every: int = 5
    """Epochs between checkpoints (the last epoch always checkpoints)."""
    max_failures: int = 2
    """Worker-group restarts Ray Train allows; each resumes from the latest checkpoint."""
    min_accuracy: float = 0.97
    """Test accuracy at or above which the new version becomes ``champion``."""
    distill_temperature: float = 2.0
    """Softmax temperature of the soft targets when distilling from a teacher."""
    distill_alpha: float = 0.7
    """Weight of the soft-target loss when distilling (the rest is cross-entropy)."""

    def __post_init__(self) -> None:
        checks = [
            (self.num_workers >= 1, "num_workers must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.zero_stage in (0, 1, 2, 3), "zero_stage must be 0, 1, 2 or 3"),
            (
                not self.offload_optimizer or self.zero_stage >= 1,
                "offload_optimizer needs ZeRO >= 1",
            ),
            (not self.offload_params or self.zero_stage == 3, "offload_params needs ZeRO-3"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.max_failures >= -1, "max_failures must be >= 0, or -1 for unlimited"),
            (0.0 <= self.min_accuracy <= 1.0, "min_accuracy must be in [0, 1]"),
            (self.distill_temperature > 0, "distill_temperature must be > 0"),
            (0.0 <= self.distill_alpha <= 1.0, "distill_alpha must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig {self.name!r}: {message}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def task(self) -> str:
        """``classify`` or ``lm``, from the architecture."""
        return architecture(self.architecture).task

    def objective(self) -> tuple[str, str]:
        """The validation metric the loop reports that tuning optimises, and its mode."""
        return ("val_loss", "min") if self.task == LM else ("val_accuracy", "max")

    def with_overrides(self, pairs: list[str]) -> TrainConfig:
        """Apply ``key=value`` overrides, each value cast to the field's type."""
        types = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        changes = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in types or types[key] is dict:
                raise ValueError(
                    f"Bad override {pair!r}: use key=value with key in {sorted(types)}."
                )
            cast = types[key]
            changes[key] = value.lower() in ("1", "true", "yes") if cast is bool else cast(value)
        return replace(self, **changes)


def digits_cnn() -> TrainConfig:
    """The demo run: the digits CNN on 2 CPU workers with ZeRO-2."""
    return TrainConfig(name="digits_cnn")


def digits_cnn_zero1() -> TrainConfig:
    return replace(digits_cnn(), name="digits_cnn_zero1", zero_stage=1)


def digits_cnn_zero3() -> TrainConfig:
    """Parameters, gradients and optimizer state all partitioned across the workers."""
    return replace(digits_cnn(), name="digits_cnn_zero3", zero_stage=3)


def digits_cnn_offload() -> TrainConfig:
    """ZeRO-3 with optimizer and parameters offloaded to the CPU, 2 micro-batches per step:
    the memory-lean layout for models larger than the accelerators."""
    return replace(
        digits_cnn(),
        name="digits_cnn_offload",
        zero_stage=3,
        offload_optimizer=True,
        offload_params=True,
        grad_accum=2,
    )


def digits_cnn_smoke() -> TrainConfig:
    """A few epochs, for tests of the job's plumbing (no accuracy gate)."""
    return replace(digits_cnn(), name="digits_cnn_smoke", epochs=3, min_accuracy=0.0)


def digits_transformer() -> TrainConfig:
    """The reference transformer classifier (3.2 M parameters) on digits."""
    return replace(
        digits_cnn(),
        name="digits_transformer",
        architecture="digits_transformer",
        lr=1e-3,
        min_accuracy=0.9,  # it reaches ~94 % on digits' 1,167 training rows
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    f.__name__: f
    for f in (
        digits_cnn,
        digits_cnn_zero1,
        digits_cnn_zero3,
        digits_cnn_offload,
        digits_cnn_smoke,
        digits_transformer,
    )
}


def preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(
            f"Unknown config {name!r}; presets: {', '.join(sorted(PRESETS))}."
        ) from None
