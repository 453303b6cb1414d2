"""Typed run configurations and their named presets.

A preset is a function returning a config; variants derive from a base with
``dataclasses.replace``. ``python -m jobs.train --config <preset>`` picks one by name.
"""

from jobs.configs.train import PRESETS, ChampionGate, TrainConfig, preset
from jobs.configs.tune import Param, TuneJobConfig

__all__ = [
    "PRESETS",
    "ChampionGate",
    "Param",
    "TrainConfig",
    "TuneJobConfig",
    "preset",
]
