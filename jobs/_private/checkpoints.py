"""Sharded training checkpoints: DeepSpeed's per-rank files plus a SHA-256 manifest per rank.

Every rank writes its own DeepSpeed shard (model and optimizer partitions) into its own
folder, then, last, ``manifest.rank<r>.json`` with the SHA-256 of each file it wrote and
the training position (epoch, step). Ray Train uploads all ranks' folders into one
checkpoint directory and registers the checkpoint only once every rank has reported, so a
checkpoint Ray Train hands back on restore has all ranks' files; :func:`verify` still
checks that every rank's manifest is there and every file matches it before DeepSpeed
reads a byte, so a half-written or altered checkpoint is refused, never loaded.

DeepSpeed reads its files with ``torch.load``; :class:`SafeCheckpointEngine` makes that
``weights_only=True`` (tensors and plain containers only, nothing executes on load).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from models.exceptions import ModelError

DEEPSPEED_DIR = "deepspeed"
TAG = "state"
MANIFEST_GLOB = "manifest.rank*.json"


class CheckpointError(ModelError):
    """A checkpoint is incomplete or does not match its manifest."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, rank: int, world_size: int, position: dict) -> Path:
    """Hash every file under ``folder`` (this rank's part) and write the rank's manifest.

    Written last and renamed into place, so a manifest only exists for finished files.
    """
    files = {
        str(p.relative_to(folder)): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("manifest.rank")
    }
    manifest = {"rank": rank, "world_size": world_size, "files": files, **position}
    final = folder / f"manifest.rank{rank}.json"
    partial = final.with_suffix(".partial")
    partial.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(partial, final)
    return final


def verify(folder: Path) -> dict:
    """Check a checkpoint against its manifests; return the training position it holds.

    Raises:
        CheckpointError: a rank's manifest is missing, or a file is missing or altered.
    """
    manifests = [json.loads(p.read_text()) for p in sorted(folder.glob(MANIFEST_GLOB))]
    if not manifests:
        raise CheckpointError(f"Checkpoint {folder} has no manifest; it is incomplete.")
    world_size = manifests[0]["world_size"]
    ranks = sorted(m["rank"] for m in manifests)
    if ranks != list(range(world_size)):
        raise CheckpointError(
            f"Checkpoint {folder} has manifests for ranks {ranks} of {world_size}; incomplete."
        )
    for manifest in manifests:
        for name, expected in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"Checkpoint file {name} is missing from {folder}.")
            if _sha256(path) != expected:
                raise CheckpointError(f"Checkpoint file {name} fails its SHA-256 check.")
    positions = {(m["epoch"], m["step"]) for m in manifests}
    if len(positions) != 1:
        raise CheckpointError(f"Checkpoint {folder}: ranks disagree on the position {positions}.")
    return {"epoch": manifests[0]["epoch"], "step": manifests[0]["step"], "world_size": world_size}


def _deepspeed_state_classes() -> list:
    """DeepSpeed's plain-data classes its checkpoints hold besides tensors and containers
    (enums and the loss scaler's settings): allowlisted for ``weights_only`` loading, which
    restores their fields and runs nothing else."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True``."""

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_deepspeed_state_classes()):
            return torch.load(path, map_location=map_location, weights_only=True)


def save_shard(engine, folder: Path, rank: int, world_size: int, position: dict) -> None:
    """Write this rank's DeepSpeed shard and manifest into ``folder`` (every rank calls it:
    DeepSpeed's save is a collective)."""
    (folder / DEEPSPEED_DIR / TAG).mkdir(
        parents=True, exist_ok=True
    )  # DeepSpeed makes it on rank 0 only
    engine.save_checkpoint(str(folder / DEEPSPEED_DIR), tag=TAG, save_latest=False)
    write_manifest(folder, rank, world_size, position)


def load_shards(engine, folder: Path) -> dict:
    """Verify the checkpoint, then restore model, optimizer and schedule into ``engine``."""
    position = verify(folder)
    engine.checkpoint_engine = SafeCheckpointEngine()
    load_path, _ = engine.load_checkpoint(str(folder / DEEPSPEED_DIR), tag=TAG)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no state in {folder / DEEPSPEED_DIR}.")
    return position
