"""A model package: the folder a model version is made of, with a SHA-256 manifest.

Layout: ``model.onnx`` (what serves), ``model.safetensors`` (weights for fine-tuning and
distillation), ``config.json`` (architecture, options, signature, metrics) and
``manifest.json`` (SHA-256 of each of those). The registry records the manifest's own hash
on the model version, so a file changed after registration, or a manifest rewritten to
match, is refused on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from models.exceptions import ArtifactIntegrityError
from models.signature import Signature

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> str:
    """Hash every file in ``folder`` into its manifest; return the manifest's SHA-256."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {"files": {p.name: sha256_file(p) for p in files}}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return sha256_file(folder / MANIFEST_FILE)


def verify(folder: Path, manifest_sha256: str, only: tuple[str, ...] | None = None) -> None:
    """Raise ArtifactIntegrityError unless the manifest and every file match their hashes.

    ``only`` checks just those files of the manifest (a pipeline stage downloads the weights
    and config, not the ONNX model); a name the manifest lacks is refused too.
    """
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.exists():
        raise ArtifactIntegrityError("Model package has no manifest.json.", path=str(folder))
    if sha256_file(manifest_path) != manifest_sha256:
        raise ArtifactIntegrityError(
            "manifest.json does not match the hash the registry recorded: refusing to load.",
            path=str(manifest_path),
        )
    files = json.loads(manifest_path.read_text())["files"]
    if only is not None:
        files = {name: files.get(name, "") for name in only}
    for name, expected in files.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            raise ArtifactIntegrityError(
                f"{name} is missing or its SHA-256 differs from the manifest: refusing to load.",
                path=str(path),
            )


@dataclass(frozen=True, slots=True)
class PackageConfig:
    """config.json: enough to rebuild the torch model and to validate requests."""

    architecture: str
    signature: Signature
    options: dict
    metrics: dict[str, float]
    extra: dict = field(default_factory=dict)
    """Further facts, e.g. {"compression": "int8_dynamic"}."""

    def write(self, folder: Path) -> None:
        data = {
            "architecture": self.architecture,
            "signature": self.signature.to_dict(),
            "options": self.options,
            "metrics": self.metrics,
            "extra": self.extra,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True))

    @classmethod
    def read(cls, folder: Path) -> PackageConfig:
        data = json.loads((folder / CONFIG_FILE).read_text())
        return cls(
            architecture=data["architecture"],
            signature=Signature.from_dict(data["signature"]),
            options=data.get("options", {}),
            metrics=data.get("metrics", {}),
            extra=data.get("extra", {}),
        )
