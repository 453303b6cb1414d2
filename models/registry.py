"""The model registry: MLflow's, with our rules on top.

A model version is an immutable package (see ``models.package``) logged as the artifacts
of an MLflow run. Its lineage lives in version tags written when the version is created and
never changed: the parent version it was derived from (``aimass.parent`` = ``digits@3``), the
package's manifest hash and, from the training job, the data manifest hash and git commit.
Names, references, aliases and lineage tags are spelled in ``models.refs`` (free of MLflow).

Alias history: every move made here is recorded (``models.alias_events``, one tag per
event). ``rollback`` undoes the last move of an alias (a second rollback undoes the
first). A move and its event are two writes: a process killed between them leaves the move
unrecorded, never an event for a move that did not happen.

Backends: a SQLite file (``sqlite:///…``, one machine) or a tracking server (``http://…``,
clusters). ``artifact_root`` is where experiments created here keep their runs' artifacts:
a folder or a shared URI (``s3://…``) with SQLite; with a server, a shared URI, e.g.
``mlflow-artifacts:/aimass`` to go through the server's artifact proxy (``mlflow server
--artifacts-destination …``) so that nodes need no storage credentials. A plain folder with
a server would be a path on whichever machine registered, which neither the server nor the
other nodes can read: there, ``experiment()`` leaves the location to the server's default
(``mlflow-artifacts:/`` when it serves artifacts).

Concurrency: SQLite takes one writer at a time. MLflow waits up to 20 s for the lock and
retries a version number taken by a concurrent writer 3 times; past that it raises
(``database is locked`` as TEMPORARILY_UNAVAILABLE, or "Model Version creation error").
Registry writes go through ``_retry``, a short bounded backoff on top.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils import get_results_from_paginated_fn

from models import package
from models.alias_events import EVENT_PREFIX, AliasEvent
from models.exceptions import ModelError, ModelNotFound
from models.refs import (
    CHAMPION,
    EXPORT_TAG,
    MANIFEST_TAG,
    PARENT_TAG,
    ModelRef,
    ModelSummary,
    ModelVersionInfo,
    check_name,
)

if TYPE_CHECKING:
    from cluster.settings import Settings

# Job logs and replica logs are read by people: no per-file progress bars in them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Seconds between attempts (each one doubled at random): ~10 s in all, after MLflow's own
# 20 s wait for the SQLite lock has already run out on each attempt.
_RETRY_DELAYS_S = (0.1, 0.3, 0.9, 2.7, 5.0)
_T = TypeVar("_T")


class Registry:
    """Registers packages as model versions, moves aliases, fetches verified packages.

    Args:
        tracking_uri: MLflow tracking and registry URI (``sqlite:///…`` or ``http://…``).
        artifact_root: Where runs' artifacts go for experiments created here (see the
            module docstring for what suits a tracking server).
    """

    def __init__(self, tracking_uri: str, artifact_root: str) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root.rstrip("/")
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The cluster's registry: its tracking URI, artifacts under ``<storage>/mlflow``."""
        from cluster import storage

        return cls(settings.mlflow_uri, storage.join(settings.storage_root, "mlflow"))

    def experiment(self, name: str) -> str:
        """The id of experiment ``name``, created with its artifacts under ``artifact_root``."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return _retry(
                self.client.create_experiment, name, artifact_location=self._artifact_location(name)
            )
        except MlflowException:  # created concurrently by another job
            return self.client.get_experiment_by_name(name).experiment_id

    def _artifact_location(self, experiment: str) -> str | None:
        local_root = urlparse(self.artifact_root).scheme in ("", "file")
        if local_root and urlparse(self.tracking_uri).scheme in ("http", "https"):
            return None  # the server's default; see the module docstring
        return f"{self.artifact_root}/{experiment}"

    def register(
        self,
        name: str,
        run_id: str,
        folder: Path,
        tags: dict[str, str] | None = None,
        parent: ModelVersionInfo | None = None,
    ) -> ModelVersionInfo:
        """Log ``folder`` (a package) to run ``run_id`` and register it as a new version.

        Args:
            name: The registered model; created on its first version.
            run_id: The MLflow run the package's artifacts are logged to.
            folder: The package; its manifest is written here first.
            tags: Extra version tags (e.g. the data manifest hash and git commit).
            parent: The version this one was derived from (fine-tuned, distilled, pruned).
        """
        check_name(name, "model name")
        manifest_sha = package.write_manifest(folder)
        # Ours last: caller tags cannot overwrite the lineage the registry vouches for.
        lineage = {MANIFEST_TAG: manifest_sha}
        if parent is not None:
            lineage[PARENT_TAG] = f"{parent.name}@{parent.version}"
        mv = _retry(self._log_and_create, name, run_id, folder, {**(tags or {}), **lineage})
        return _info(mv)  # as created: no read-back that could fail after the version exists

    def _log_and_create(self, name: str, run_id: str, folder: Path, tags: dict[str, str]):
        # Every step before the last can be repeated, and the last either creates the
        # version or changes nothing: so the whole sequence is safe to retry.
        self.client.log_artifacts(run_id, str(folder), artifact_path="model")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        self._ensure_model(name)
        return self.client.create_model_version(name, source=source, run_id=run_id, tags=tags)

    def _ensure_model(self, name: str) -> None:
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def set_alias(self, name: str, alias: str, version: int, reason: str = "") -> AliasEvent | None:
        """Point ``alias`` at ``version`` and record the move; None if it already points there.

        The version the alias left is read just before the move: two processes moving the
        same alias at the same moment may both record the same ``from``.
        """
        check_name(alias, "alias")
        self.get(name, version)  # a missing version fails here, before anything moves
        before = self._aliases(name).get(alias)
        if before == version:
            return None
        _retry(self.client.set_registered_model_alias, name, alias, str(version))
        return self._record(name, alias, before, version, reason)

    def promote(
        self, name: str, version: int, alias: str = CHAMPION, reason: str = ""
    ) -> AliasEvent | None:
        """Point ``alias`` (the champion by default) at ``version``; see ``set_alias``."""
        return self.set_alias(name, alias, version, reason)

    def rollback(self, name: str, alias: str = CHAMPION, reason: str = "") -> AliasEvent:
        """Move ``alias`` back to where it pointed before its last move, and record that."""
        history = self.alias_history(name, alias)
        if not history or history[-1].from_version is None:
            what = "was never moved" if not history else "pointed nowhere before its last move"
            raise ModelNotFound(
                f"Cannot roll back {name}@{alias}: it {what}, so there is no earlier version "
                f"to return to. Promote one instead: aimass models promote {name} VERSION.",
                model=name,
                alias=alias,
            )
        last = history[-1]
        why = f"rollback of {last.from_version} -> {last.to_version}" + (
            f": {reason}" if reason else ""
        )
        event = self.set_alias(name, alias, last.from_version, why)
        if event is None:
            raise ModelError(
                f"{name}@{alias} already points at version {last.from_version}: it was moved "
                "outside this registry's history, so there is no move to undo.",
                model=name,
                alias=alias,
            )
        return event

    def remove_alias(self, name: str, alias: str) -> int | None:
        """Delete ``alias`` (a release that ended); the version it pointed at, or None."""
        check_name(alias, "alias")
        before = self._aliases(name).get(alias)
        if before is not None:
            _retry(self.client.delete_registered_model_alias, name, alias)
        return before

    def tag_version(self, name: str, version: int, key: str, value: str) -> None:
        """Set a tag on a version (e.g. why a release rolled it back)."""
        _retry(self.client.set_model_version_tag, name, str(version), key, value[:5000])

    def _record(
        self, name: str, alias: str, before: int | None, after: int, reason: str
    ) -> AliasEvent:
        event = AliasEvent.new(name, alias, before, after, reason)
        _retry(self.client.set_registered_model_tag, name, event.key, event.to_json())
        return event

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """The recorded moves of ``alias`` (of every alias if None), oldest first."""
        events = [
            AliasEvent.from_tag(name, key, value)
            for key, value in self._model(name).tags.items()
            if key.startswith(EVENT_PREFIX)
        ]
        return sorted(
            (e for e in events if alias is None or e.alias == alias), key=lambda e: e.order
        )

    def list_models(self) -> list[ModelSummary]:
        """Every registered model with its newest version and its aliases, by name."""
        models = get_results_from_paginated_fn(
            lambda n, token: self.client.search_registered_models(max_results=n, page_token=token),
            max_results_per_page=100,
        )
        return [
            ModelSummary(
                name=m.name,
                latest_version=self._latest(m.name),
                aliases={a: int(v) for a, v in sorted(m.aliases.items())},
            )
            for m in sorted(models, key=lambda m: m.name)
        ]

    def all_aliases(self) -> dict[str, dict[str, int]]:
        """Every registered model's aliases, in one listing (what serves polls)."""
        models = get_results_from_paginated_fn(
            lambda n, token: self.client.search_registered_models(max_results=n, page_token=token),
            max_results_per_page=100,
        )
        return {m.name: {a: int(v) for a, v in m.aliases.items()} for m in models}

    def _latest(self, name: str) -> int | None:
        newest = self.client.search_model_versions(
            f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
        )
        return int(newest[0].version) if newest else None

    def versions(self, name: str) -> list[ModelVersionInfo]:
        """All versions of model ``name``, oldest first."""
        aliases = self._aliases(name)  # ModelNotFound rather than an empty list for a typo
        found = get_results_from_paginated_fn(
            lambda n, token: self.client.search_model_versions(
                f"name = '{name}'", max_results=n, page_token=token
            ),
            max_results_per_page=200,
        )
        # Search results leave aliases out: they come from the model's own map.
        return sorted(
            (
                replace(
                    _info(mv), aliases=tuple(a for a, v in aliases.items() if v == int(mv.version))
                )
                for mv in found
            ),
            key=lambda v: v.version,
        )

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

    def fetch(
        self, info: ModelVersionInfo, dest: Path | None = None, files: tuple[str, ...] | None = None
    ) -> Path:
        """Download a version's package and verify it against the registry's manifest hash.

        Without ``dest`` it goes to a temporary folder that lives as long as this process
        (removed at exit): jobs read from it until they end. ``files`` downloads only those
        files of the package (and its manifest), each verified.
        """
        if dest is None:
            dest = Path(tempfile.mkdtemp(prefix=f"aimass-{info.name}-v{info.version}-"))
            atexit.register(shutil.rmtree, dest, ignore_errors=True)
        if files is None:
            local = Path(self._download(info.source, dest))
        else:
            local = dest / "model"
            for name in (package.MANIFEST_FILE, *files):
                self._download(f"{info.source}/{name}", local)
        package.verify(local, info.manifest_sha256, only=files)
        return local

    def log_export(self, info: ModelVersionInfo, folder: Path, fmt: str) -> str:
        """Log ``folder``, the version in another format (e.g. ``transformers``), beside its
        package in the version's run, hashed like a package; tag the version with where it
        is and the hash. Returns its artifact URI. The package itself does not change."""
        if info.run_id is None or not info.source.endswith("/model"):
            raise ModelNotFound(
                f"{info.name} v{info.version} has no run to log to", model=info.name
            )
        sha = package.write_manifest(folder)
        path = f"exports/{fmt}"
        _retry(self.client.log_artifacts, info.run_id, str(folder), path)
        uri = f"{info.source.removesuffix('/model')}/{path}"
        self.tag_version(info.name, info.version, EXPORT_TAG.format(format=fmt), uri)
        self.tag_version(info.name, info.version, EXPORT_TAG.format(format=fmt) + ".sha256", sha)
        return uri

    def fetch_export(self, info: ModelVersionInfo, fmt: str, dest: Path) -> Path:
        """Download a version's ``fmt`` export to ``dest`` and verify it; ModelNotFound if
        it was never exported."""
        tag = EXPORT_TAG.format(format=fmt)
        current = self.get(info.name, info.version)  # tags as of now: the export is newer
        if tag not in current.tags:
            raise ModelNotFound(
                f"{info.name} v{info.version} has no {fmt} export: run jobs.export first",
                model=info.name,
            )
        local = Path(self._download(current.tags[tag], dest))
        package.verify(local, current.tags[tag + ".sha256"])
        return local

    def _download(self, uri: str, dest: Path) -> str:
        return mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dest), tracking_uri=self.tracking_uri
        )

    def _model(self, name: str):
        check_name(name, "model name")
        try:
            return self.client.get_registered_model(name)
        except MlflowException:
            raise ModelNotFound(f"No registered model {name!r}.", model=name) from None

    def _aliases(self, name: str) -> dict[str, int]:
        return {alias: int(v) for alias, v in self._model(name).aliases.items()}


def _retry(fn: Callable[..., _T], *args, **kwargs) -> _T:
    """Call ``fn``; while the database reports itself busy, wait a little and call it again."""
    for delay in _RETRY_DELAYS_S:
        try:
            return fn(*args, **kwargs)
        except MlflowException as err:
            if not _busy(err):
                raise
        # Jitter, so that two writers that collided do not collide again in lockstep.
        time.sleep(delay * (1 + random.random()))
    return fn(*args, **kwargs)  # the last attempt: its error is the caller's


def _busy(err: MlflowException) -> bool:
    text = str(err)
    return (
        err.error_code == "TEMPORARILY_UNAVAILABLE"
        or "database is locked" in text
        or "Model Version creation error" in text  # MLflow's own retries ran out
    )


def _info(mv) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        source=mv.source,
        run_id=mv.run_id,
        manifest_sha256=mv.tags.get(MANIFEST_TAG, ""),
        tags=dict(mv.tags),
        aliases=tuple(mv.aliases),
        parent=mv.tags.get(PARENT_TAG),
    )
