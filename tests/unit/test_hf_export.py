"""A GPT version in Hugging Face transformers' GPT-2 format: ``transformers`` loads the
export and computes the same logits; ``jobs.export`` logs it beside the version's package."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from transformers import GPT2LMHeadModel

from jobs import export
from models.exceptions import ArtifactIntegrityError
from models.gpt import GPT, GPTConfig
from models.hf_export import export_gpt2
from models.refs import EXPORT_TAG
from models.registry import Registry


def _same_logits(ours: GPT, folder) -> None:
    theirs = GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.randint(0, ours.cfg.vocab_size, (2, ours.cfg.block_size))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids)[0], atol=1e-5, rtol=1e-5)


def test_transformers_computes_the_same_logits(tmp_path):
    torch.manual_seed(1)
    model = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=24)).eval()
    _same_logits(model, export_gpt2(model, tmp_path / "hf"))


def test_the_export_job_logs_a_verified_artifact_of_the_version(
    settings_env, register_gpt, tmp_path, capsys
):
    registry = Registry.from_settings(settings_env)
    info, model = register_gpt(registry, "lm", seed=3)
    export.main(["--model", "lm@1", "--output", str(tmp_path / "out")])
    assert "exports/transformers" in capsys.readouterr().out
    _same_logits(model, tmp_path / "out")
    fetched = registry.fetch_export(info, "transformers", tmp_path / "fetched")
    _same_logits(model, fetched)
    assert json.loads((fetched / "config.json").read_text())["n_layer"] == model.cfg.n_layer
    # Changed where it is stored: refused on the next fetch.
    stored = urlparse(registry.get("lm", 1).tags[EXPORT_TAG.format(format="transformers")])
    (Path(stored.path) / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="model.safetensors"):
        registry.fetch_export(info, "transformers", tmp_path / "again")


def test_only_gpt_versions_export(settings_env, make_package):
    registry = Registry.from_settings(settings_env)
    run = registry.client.create_run(registry.experiment("digits"))
    registry.register("digits", run.info.run_id, make_package("pkg", 0.9))
    with pytest.raises(SystemExit, match="takes GPT versions"):
        export.main(["--model", "digits@1"])
    with pytest.raises(SystemExit, match="no version|not found|No "):
        export.main(["--model", "digits@7"])
