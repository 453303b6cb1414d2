"""Sharded checkpoint manifests, safe loading, and weights with tied or flattened tensors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from jobs._private.checkpoints import (
    CheckpointError,
    SafeCheckpointEngine,
    verify,
    write_manifest,
)
from models.weights import load_weights, save_weights
from models.zoo import build_model


def _rank_folder(root: Path, rank: int, payload: bytes) -> Path:
    """What one rank writes: a shard file, then its manifest."""
    folder = root / f"rank{rank}"
    (folder / "deepspeed" / "state").mkdir(parents=True)
    (folder / "deepspeed" / "state" / f"shard{rank}.pt").write_bytes(payload)
    write_manifest(folder, rank, 2, {"epoch": 3, "step": 40})
    return folder


def _merged(tmp_path: Path, ranks=(0, 1)) -> Path:
    """The checkpoint directory Ray Train assembles from every rank's upload."""
    merged = tmp_path / "checkpoint"
    for rank in ranks:
        src = _rank_folder(tmp_path, rank, f"weights of rank {rank}".encode())
        for path in src.rglob("*"):
            if path.is_file():
                target = merged / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    return merged


def test_a_complete_checkpoint_verifies_and_gives_its_position(tmp_path: Path):
    assert verify(_merged(tmp_path)) == {"epoch": 3, "step": 40, "world_size": 2}


def test_a_rank_missing_is_an_incomplete_checkpoint(tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"ranks \[0\] of 2"):
        verify(_merged(tmp_path, ranks=(0,)))


def test_an_altered_or_missing_file_is_refused(tmp_path: Path):
    merged = _merged(tmp_path)
    shard = merged / "deepspeed" / "state" / "shard1.pt"
    shard.write_bytes(b"something else")
    with pytest.raises(CheckpointError, match="shard1.pt fails its SHA-256"):
        verify(merged)
    shard.unlink()
    with pytest.raises(CheckpointError, match="shard1.pt is missing"):
        verify(merged)


def test_no_manifest_means_incomplete(tmp_path: Path):
    (tmp_path / "deepspeed").mkdir()
    with pytest.raises(CheckpointError, match="no manifest"):
        verify(tmp_path)


def test_ranks_disagreeing_on_the_position_are_refused(tmp_path: Path):
    merged = _merged(tmp_path)
    manifest = merged / "manifest.rank1.json"
    data = json.loads(manifest.read_text()) | {"step": 41}
    manifest.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="disagree"):
        verify(merged)


class _WritesMarker:
    """A pickle that, when unpickled, writes a marker file (RELIABILITY.md B7)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_deepspeed_files_load_weights_only_so_a_malicious_pickle_runs_nothing(tmp_path: Path):
    marker = tmp_path / "marker"
    evil = tmp_path / "mp_rank_00_model_states.pt"
    evil.write_bytes(pickle.dumps({"module": _WritesMarker(marker)}))
    with pytest.raises(pickle.UnpicklingError):
        SafeCheckpointEngine().load(str(evil))
    assert not marker.exists()
    # Real tensors and plain containers load.
    good = tmp_path / "good.pt"
    torch.save({"module": {"w": torch.ones(2)}, "step": 3}, good)
    assert SafeCheckpointEngine().load(str(good))["step"] == 3


def test_weights_round_trip_with_tied_and_flattened_parameters(tmp_path: Path):
    model = build_model("gpt", preset="tiny")
    # As under DeepSpeed: every parameter a view into one flat buffer.
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    save_weights(model, tmp_path / "w.safetensors")
    loaded = load_weights(build_model("gpt", preset="tiny"), tmp_path / "w.safetensors")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.lm_head.weight is loaded.wte.weight  # still tied
