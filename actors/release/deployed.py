"""The release controller's parts on the cluster: the MLflow registry and the storage URI,
from the cluster's settings.

Only the controller actor's own process imports this module (``controller.DEPLOYED_PARTS``
names it by import path): the actor is created by whoever needs it first, usually a Gateway
replica, and a Gateway replica never loads MLflow or torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cluster import storage
from cluster.settings import get_settings
from models import package
from models.refs import ModelRef
from models.registry import Registry
from models.zoo import architecture


class ClusterRegistry(Registry):
    """The model registry, with the two reads the controller needs (``ReleaseRegistry``)."""

    def aliased(self, model: str, alias: str) -> int:
        return self.resolve(ModelRef(model, alias=alias)).version

    def signature(self, model: str, version: int) -> dict:
        """What clients see of a version: its input/output signature and its task. Read
        from its package (downloaded and verified), as the Predictor will load it."""
        with tempfile.TemporaryDirectory(prefix="aimass-signature-") as tmp:
            folder = self.fetch(self.get(model, version), Path(tmp))
            cfg = package.PackageConfig.read(folder)
        info = {"signature": cfg.signature.to_dict(), "task": architecture(cfg.architecture).task}
        if "members" in cfg.options:  # an ensemble: its answers say who answered
            info["members"] = list(cfg.options["members"])
        return info


def parts() -> dict:
    """``ReleaseController``'s keyword arguments on this cluster."""
    settings = get_settings()
    return {
        "registry": ClusterRegistry.from_settings(settings),
        "state_uri": storage.join(settings.storage_root, "releases.json"),
        "region": settings.region,  # regional aliases, when a rollout pins this region
    }
