"""The tuning configuration: which training preset, the search space, the search, the scheduler.

``python -m jobs.tune`` builds one from its flags; every trial is the preset with the fixed
``--set`` overrides, then the trial's sampled values, under a name of its own. Under PBT the
same space also says how a trial's values mutate (``TuneJobConfig.mutations``).

A dimension's domain says which values are legal; the search says how they are visited:
random samples them, TPE and evolution learn where the good ones are, and grid tries every
combination of the finite ones (a choice's values, a randint's integers).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.configs.train import TrainConfig, preset

Scalar = int | float | bool | str
MAX_TRIALS = 10_000


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

    def points(self) -> tuple[Scalar, ...] | None:
        """Every value of a finite dimension (a choice's values, a randint's integers), the
        points a grid search tries; None for a float range, which has no finite set."""
        if self.kind == "choice":
            return self.values
        if self.kind == "randint":
            return tuple(range(int(self.low), int(self.high)))
        return None


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
    samples: int = Field(
        8,
        ge=1,
        le=MAX_TRIALS,
        description="Trials to run; with search grid, runs of the whole grid (Tune's "
        "num_samples: 2 runs every grid point twice), 1 by default.",
    )
    scheduler: Literal["asha", "fifo", "pbt"] = Field(
        "asha",
        description="asha stops weak trials early (asynchronous successive halving); fifo "
        "runs every trial to the end; pbt (population based training) runs every trial to "
        "the end and, every perturbation_interval epochs, restarts the weakest from a "
        "stronger trial's checkpoint with that trial's values mutated.",
    )
    search: Literal["optuna", "random", "grid", "evolution"] = Field(
        "optuna",
        description="optuna (TPE, learns from finished trials), random sampling, grid (every "
        "combination of the space's choices and randint integers; a float range needs its "
        "points written as a choice) or evolution (Optuna's NSGA-II genetic algorithm: generations of "
        "population_size trials, each bred from the best of the ones before). pbt samples "
        "its first values at random and mutates them itself: random is its default, the "
        "others are refused.",
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
    population_size: int = Field(
        0,
        ge=0,
        description="evolution: trials per generation; 0 takes about the square root of "
        "samples (at least 2), as many generations as trials in each.",
    )
    seed: int = Field(0, description="Seed of the search (same seed, same sampled values).")

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_the_strategy(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # PBT's mutations replace a searcher's model, so pbt defaults to random sampling.
        if data.get("scheduler") == "pbt":
            data = {"search": "random", **data}
        # A grid's size is the number of trials: samples counts runs of the whole grid.
        if data.get("search") == "grid":
            data = {"samples": 1, **data}
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
        if self.search == "grid":
            self._check_grid()
        return self

    def _check_grid(self) -> None:
        for key, param in self.space.items():
            if param.points() is None:
                raise ValueError(
                    f"search grid needs every dimension's points, and {key} is a "
                    f"{param.kind} range: write its points as a choice, e.g. --space "
                    f"{key}=choice:{param.low:g},{param.high:g} (given, --space replaces the "
                    "whole default space)."
                )
        if self.trials > MAX_TRIALS:
            raise ValueError(
                f"search grid of {self.trials // self.samples} points x samples "
                f"{self.samples} makes {self.trials} trials, over {MAX_TRIALS}; give fewer "
                "--space choices or a lower --samples."
            )

    def _check_pbt(self, base: TrainConfig) -> None:
        if self.search in ("optuna", "evolution"):
            raise ValueError(
                f"search {self.search} cannot drive pbt: PBT changes running trials' values "
                "itself, which Optuna's model would not know; use --search random (pbt's "
                "default)."
            )
        if self.search == "grid":
            raise ValueError(
                "search grid cannot drive pbt: PBT moves trials off their grid points; use "
                "--search random (pbt's default)."
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

    @property
    def trials(self) -> int:
        """Trials the experiment runs: samples, or under grid, samples x the grid's points."""
        if self.search != "grid":
            return self.samples
        return self.samples * math.prod(len(param.points()) for param in self.space.values())

    @property
    def population(self) -> int:
        """evolution's trials per generation: population_size, or about sqrt(samples)."""
        return self.population_size or max(2, round(math.sqrt(self.samples)))

    def param_space(self) -> dict:
        """The space as Ray Tune's domains; under grid, each dimension's points as a
        ``tune.grid_search`` (Tune runs their every combination, samples times)."""
        from ray import tune

        if self.search == "grid":
            return {key: tune.grid_search(list(p.points())) for key, p in self.space.items()}
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
