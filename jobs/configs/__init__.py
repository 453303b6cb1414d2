"""Typed run configurations and their named presets.

A preset is a function returning a config; variants derive from a base with
``dataclasses.replace``. ``python -m jobs.train --config <preset>`` picks one by name and
``--set key=value`` overrides its fields (``TrainConfig.with_overrides``), validated by
pydantic like every config here.
"""

from jobs.configs.pipeline import PIPELINES, PipelineConfig, Stage, pipeline
from jobs.configs.train import PRESETS, ChampionGate, TrainConfig, preset, preset_for, presets_of
from jobs.configs.tune import Param, TuneJobConfig
from jobs.configs.validation import OverrideError

__all__ = [
    "PIPELINES",
    "PRESETS",
    "ChampionGate",
    "OverrideError",
    "Param",
    "PipelineConfig",
    "Stage",
    "TrainConfig",
    "TuneJobConfig",
    "pipeline",
    "preset",
    "preset_for",
    "presets_of",
]
