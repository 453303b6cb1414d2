"""Two registered versions side by side: lineage, the package's metrics, the run's metrics.

What ``aimass models diff`` prints. Everything read is checked against what the registry
recorded (the package's manifest hash) before it is shown.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow

from models import package
from models.exceptions import ArtifactIntegrityError
from models.refs import DATA_TAG, GIT_TAG, ModelRef, ModelVersionInfo
from models.registry import Registry


def diff(registry: Registry, a: ModelRef | str, b: ModelRef | str) -> dict[str, dict[str, tuple]]:
    """Two versions side by side: ``{section: {key: (value_a, value_b)}}``.

    Sections: ``lineage`` (version, parent, run, data and code), ``metrics`` (the
    package's config.json, measured on what serves) and ``run_metrics`` (the MLflow
    run's latest values, e.g. training curves). A value one side lacks is None.
    """
    left, right = registry.resolve(a), registry.resolve(b)
    lineage = {
        "version": (f"{left.name}@{left.version}", f"{right.name}@{right.version}"),
        "aliases": (", ".join(left.aliases), ", ".join(right.aliases)),
        "parent": (left.parent, right.parent),
        "run_id": (left.run_id, right.run_id),
        "data_manifest_sha256": (left.tags.get(DATA_TAG), right.tags.get(DATA_TAG)),
        "git_sha": (left.tags.get(GIT_TAG), right.tags.get(GIT_TAG)),
        "manifest_sha256": (left.manifest_sha256, right.manifest_sha256),
    }
    return {
        "lineage": lineage,
        "metrics": _side_by_side(package_metrics(registry, left), package_metrics(registry, right)),
        "run_metrics": _side_by_side(_run_metrics(registry, left), _run_metrics(registry, right)),
    }


def package_metrics(registry: Registry, info: ModelVersionInfo) -> dict[str, float]:
    """The metrics in a version's config.json, checked against its manifest.

    Downloads config.json and manifest.json only, not the weights.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for file in (package.MANIFEST_FILE, package.CONFIG_FILE):
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{info.source}/{file}",
                dst_path=tmp,
                tracking_uri=registry.tracking_uri,
            )
        manifest = folder / package.MANIFEST_FILE
        listed = (
            json.loads(manifest.read_text())["files"].get(package.CONFIG_FILE)
            if package.sha256_file(manifest) == info.manifest_sha256
            else None
        )
        if listed is None or package.sha256_file(folder / package.CONFIG_FILE) != listed:
            raise ArtifactIntegrityError(
                f"config.json of {info.name}@{info.version} does not match the manifest "
                "the registry recorded: refusing to read it.",
                model=info.name,
                version=str(info.version),
            )
        return package.PackageConfig.read(folder).metrics


def _run_metrics(registry: Registry, info: ModelVersionInfo) -> dict[str, float]:
    return dict(registry.client.get_run(info.run_id).data.metrics) if info.run_id else {}


def _side_by_side(a: dict, b: dict) -> dict[str, tuple]:
    return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys())}
