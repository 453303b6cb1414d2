"""The model registry: MLflow's, with our rules on top.

A model version is an immutable package (see ``models.package``) logged as the artifacts
of an MLflow run. Aliases (``champion`` serves, ``candidate`` is next) are the source of
truth for what serves. References are ``name``, ``name@alias`` or ``name@<version>``;
names are checked before anything touches a path or a URL.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from models import package
from models.exceptions import InvalidModelRef, ModelNotFound

# Job logs and replica logs are read by people: no per-file progress bars in them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CHAMPION = "champion"
CANDIDATE = "candidate"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
MANIFEST_TAG = "aimass.manifest_sha256"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed reference to a model version: by alias, by number, or ``champion`` by default."""

    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, at, selector = text.partition("@")
        check_name(name, "model name")
        if not at:
            return cls(name, alias=CHAMPION)
        if selector.isdigit():
            return cls(name, version=int(selector))
        check_name(selector, "alias")
        return cls(name, alias=selector)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias if self.alias else self.version}"


def check_name(value: str, what: str = "name") -> str:
    """Accept letters, digits, '-' and '_' only: no paths, URLs or traversal can pass."""
    if not _NAME.fullmatch(value or ""):
        raise InvalidModelRef(
            f"Invalid {what} {value!r}: use 1-64 letters, digits, '-' or '_', starting "
            "with a letter.",
            value=str(value),
        )
    return value


@dataclass(frozen=True, slots=True)
class ModelVersionInfo:
    name: str
    version: int
    source: str
    run_id: str | None
    manifest_sha256: str
    tags: dict[str, str]
    aliases: tuple[str, ...]


class Registry:
    """Registers packages as model versions, moves aliases, fetches verified packages.

    Args:
        tracking_uri: MLflow tracking and registry URI (``sqlite:///…`` or ``http://…``).
        artifact_root: Where runs' artifacts go for experiments created here.
    """

    def __init__(self, tracking_uri: str, artifact_root: str) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root.rstrip("/")
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def experiment(self, name: str) -> str:
        """The id of experiment ``name``, created with its artifacts under ``artifact_root``."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=f"{self.artifact_root}/{name}"
            )
        except MlflowException:  # created concurrently by another job
            return self.client.get_experiment_by_name(name).experiment_id

    def register(
        self, name: str, run_id: str, folder: Path, tags: dict[str, str] | None = None
    ) -> ModelVersionInfo:
        """Log ``folder`` (a package) to run ``run_id`` and register it as a new version."""
        check_name(name, "model name")
        manifest_sha = package.write_manifest(folder)
        self.client.log_artifacts(run_id, str(folder), artifact_path="model")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = self.client.create_model_version(
            name, source=source, run_id=run_id, tags={**(tags or {}), MANIFEST_TAG: manifest_sha}
        )
        return self.get(name, int(mv.version))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        check_name(alias, "alias")
        self.client.set_registered_model_alias(name, alias, str(version))

    def get(self, name: str, version: int) -> ModelVersionInfo:
        try:
            mv = self.client.get_model_version(name, str(version))
        except MlflowException:
            raise ModelNotFound(
                f"Model {name!r} has no version {version}.", model=name, version=str(version)
            ) from None
        return _info(mv)

    def resolve(self, ref: ModelRef | str) -> ModelVersionInfo:
        """The version a reference points at (an alias is looked up now, not cached)."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if ref.version is not None:
            return self.get(ref.name, ref.version)
        try:
            mv = self.client.get_model_version_by_alias(ref.name, ref.alias)
        except MlflowException:
            raise ModelNotFound(
                f"Model {ref.name!r} has no version with alias {ref.alias!r}.",
                model=ref.name,
                alias=str(ref.alias),
            ) from None
        return _info(mv)

    def fetch(self, info: ModelVersionInfo, dest: Path | None = None) -> Path:
        """Download a version's package and verify it against the registry's manifest hash."""
        dest = dest or Path(tempfile.mkdtemp(prefix=f"aimass-{info.name}-v{info.version}-"))
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=str(dest))
        )
        package.verify(local, info.manifest_sha256)
        return local


def _info(mv) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        source=mv.source,
        run_id=mv.run_id,
        manifest_sha256=mv.tags.get(MANIFEST_TAG, ""),
        tags=dict(mv.tags),
        aliases=tuple(mv.aliases),
    )
