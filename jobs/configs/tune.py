"""The tuning configuration: which training preset, the search space, the search, the scheduler.

``python -m jobs.tune`` builds one from its flags; every trial is the preset with the fixed
``--set`` overrides, then the trial's sampled values, under a name of its own. Under PBT the
same space also says how a trial's values mutate (``TuneJobConfig.mutations``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.configs.train import TrainConfig, preset

Scalar = int | float | bool | str


class Param(BaseModel):
    """One dimension of the search space, written ``kind:low:high`` or ``choice:a,b,c``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["loguniform", "uniform", "randint", "choice"] = Field(
        description="loguniform and uniform sample floats in [low, high]; randint integers "
        "in [low, high); choice one of values."
    )
    low: float | None = Field(None, description="Lower bound (not for choice).")
    high: float | None = Field(None, description="Upper bound (not for choice).")
    values: tuple[Scalar, ...] = Field((), description="The options of a choice.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        # The command line's form (``--space lr=loguniform:1e-4:1e-2``) validates as the
        # fields it stands for, so that a bad one is reported like any other field.
        return _fields_of(data) if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.kind == "choice":
            if not self.values:
                raise ValueError("a choice needs values: write choice:16,32,64")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.kind} needs low < high: write {self.kind}:LOW:HIGH")
        elif self.kind == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0: write loguniform:1e-4:1e-2")
        return self

    @classmethod
    def parse(cls, text: str) -> Param:
        """``loguniform:1e-4:1e-2``, ``uniform:0:0.3``, ``randint:1:5``, ``choice:16,32``."""
        return cls.model_validate(text)

    def domain(self):
        """This dimension as a Ray Tune search domain."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "randint":
            return tune.randint(int(self.low), int(self.high))
        return getattr(tune, self.kind)(self.low, self.high)


def _fields_of(text: str) -> dict:
    kind, _, rest = text.partition(":")
    if kind == "choice":
        return {"kind": kind, "values": tuple(_scalar(v) for v in rest.split(",") if v)}
    low, _, high = rest.partition(":")
    try:
        return {"kind": kind, "low": float(low), "high": float(high)}
    except ValueError:
        raise ValueError(
            f"Bad domain {text!r}: write KIND:LOW:HIGH with KIND loguniform, uniform or "
            "randint (loguniform:1e-4:1e-2), or choice:A,B,C."
        ) from None


def _scalar(text: str) -> Scalar:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def default_space() -> dict[str, Param]:
    """Learning rate and weight decay on log scales, and the per-worker batch size."""
    return {
        "lr": Param(kind="loguniform", low=1e-4, high=2e-2),
        "weight_decay": Param(kind="loguniform", low=1e-6, high=1e-2),
        "batch_size": Param(kind="choice", values=(16, 32, 64)),
    }


class TuneJobConfig(BaseModel):
    """A hyperparameter search over one training preset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="Experiment name: its folder <storage>/ray_tune/<name> and MLflow run name.",
    )
    config: str = Field("digits_cnn_smoke", description="Training preset every trial starts from.")
    overrides: tuple[str, ...] = Field(
        (), description="Fixed key=value overrides of the preset, applied to every trial."
    )
    space: dict[str, Param] = Field(
        default_factory=default_space,
        description="TrainConfig field -> its search domain.",
    )
    samples: int = Field(8, ge=1, le=10_000, description="Trials to run.")
    scheduler: Literal["asha", "fifo", "pbt"] = Field(
        "asha",
        description="asha stops weak trials early (asynchronous successive halving); fifo "
        "runs every trial to the end; pbt (population based training) runs every trial to "
        "the end and, every perturbation_interval epochs, restarts the weakest from a "
        "stronger trial's checkpoint with that trial's values mutated.",
    )
    search: Literal["optuna", "random"] = Field(
        "optuna",
        description="optuna (TPE, learns from finished trials) or random sampling. pbt "
        "samples its first values at random and mutates them itself: random is its default, "
        "optuna is refused.",
    )
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped.")
    reduction_factor: float = Field(
        3, gt=1, description="ASHA: keep the best 1/reduction_factor at each rung."
    )
    perturbation_interval: int = Field(
        1,
        ge=1,
        description="PBT: epochs between a trial's perturbations (fewer than the preset's "
        "epochs); each one compares the trial with the others and may clone a stronger one.",
    )
    max_concurrent: int = Field(
        0, ge=0, description="Trials at once; 0 derives it from the cluster's free resources."
    )
    seed: int = Field(0, description="Seed of the search (same seed, same sampled values).")

    @model_validator(mode="before")
    @classmethod
    def _pbt_samples_at_random(cls, data: Any) -> Any:
        # PBT's mutations replace a searcher's model, so pbt defaults to random sampling.
        if isinstance(data, dict) and data.get("scheduler") == "pbt":
            return {"search": "random", **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> TuneJobConfig:
        base = self.base()  # an unknown preset or a bad override fails here, named
        types = base.settable()
        fixed = {pair.partition("=")[0] for pair in self.overrides}
        for key in self.space:
            if key not in types:
                raise ValueError(
                    f"space: {key!r} is not a tunable field; use one of "
                    f"{sorted(k for k, t in types.items() if t in (int, float))}."
                )
            if key in fixed:
                raise ValueError(f"space: {key!r} is also fixed with --set; keep one of the two.")
        if not self.space:
            raise ValueError("space is empty: give at least one --space KEY=DOMAIN.")
        if self.scheduler == "asha" and self.grace_period > base.epochs:
            raise ValueError(
                f"grace_period {self.grace_period} exceeds the preset's {base.epochs} epochs; "
                "lower it or --set epochs=N."
            )
        if self.scheduler == "pbt":
            self._check_pbt(base)
        return self

    def _check_pbt(self, base: TrainConfig) -> None:
        if self.search == "optuna":
            raise ValueError(
                "search optuna cannot drive pbt: PBT changes running trials' values itself, "
                "which Optuna's model would not know; use --search random (pbt's default)."
            )
        if self.samples < 2:
            raise ValueError(
                f"pbt needs a population: samples {self.samples} < 2; use --samples 2 or more."
            )
        if self.perturbation_interval >= base.epochs:
            raise ValueError(
                f"perturbation_interval {self.perturbation_interval} leaves no epoch to "
                f"perturb in the preset's {base.epochs}; lower it below {base.epochs} or "
                "--set epochs=N."
            )

    def base(self) -> TrainConfig:
        """The preset with the fixed overrides; each trial checkpoints every epoch, so that
        a stopped or interrupted trial keeps its last epoch."""
        return replace(preset(self.config).with_overrides(self.overrides), checkpoint_every=1)

    def trial(self, trial_id: str, params: dict) -> TrainConfig:
        """The TrainConfig of trial ``trial_id`` with its sampled ``params`` (validated as
        the fields' types, as any TrainConfig)."""
        values = {key: value for key, value in params.items() if key in self.space}
        return replace(self.base(), **values, name=f"{self.name}-{trial_id}")

    def param_space(self) -> dict:
        return {key: param.domain() for key, param in self.space.items()}

    def mutations(self) -> dict:
        """PBT's ``hyperparam_mutations``: a range's domain (the value is multiplied by 0.8
        or 1.2, or resampled) and a choice's values as a list (the value moves to a
        neighbour, or is resampled)."""
        return {
            key: list(param.values) if param.kind == "choice" else param.domain()
            for key, param in self.space.items()
        }

    def clamp(self, config: dict) -> dict:
        """``config`` with each range's value pulled back into its bounds: PBT's x1.2 and
        x0.8 know no bounds. Its ``custom_explore_fn``."""
        out = dict(config)
        for key, param in self.space.items():
            if param.kind == "choice" or key not in out:
                continue
            high = param.high - 1 if param.kind == "randint" else param.high  # randint: [low, high)
            out[key] = type(out[key])(min(max(out[key], param.low), high))
        return out
