"""What every trial of an experiment shares, and the keys a trial reports to Tune."""

from __future__ import annotations

from dataclasses import dataclass

from cluster import storage
from cluster.settings import Settings
from jobs.configs import TuneJobConfig
from models.dataset import Manifest
from models.registry import Registry

EPOCHS = "epochs_done"
"""Epochs a trial's Train run has completed: Tune's own ``training_iteration`` restarts at
1 when an interrupted trial resumes, while its Train run continues from its checkpoint."""
REPEATED = "repeats_last_epoch"
"""Marks a trial's return value, which repeats its last epoch's result (``run_trial``)."""


@dataclass(frozen=True, slots=True)
class TrialContext:
    """What every trial's driver needs, shipped once through the object store."""

    job: TuneJobConfig
    settings: Settings
    manifest: Manifest
    parent_run_id: str
    git_sha: str

    @property
    def experiment_uri(self) -> str:
        return experiment_uri(self.settings, self.job.name)

    def registry(self) -> Registry:
        return Registry.from_settings(self.settings)


def experiment_uri(settings: Settings, name: str) -> str:
    return storage.join(settings.storage_root, "ray_tune", name)


def with_epochs(metrics: dict) -> dict:
    return {**metrics, EPOCHS: metrics["epoch"] + 1}


def fmt(value) -> str:
    """A sampled value for people: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
