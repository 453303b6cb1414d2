"""Export a registered GPT version in Hugging Face ``transformers``' format, as an artifact
of the version: the same weights then load in ``transformers`` and serve in vLLM or Ray
Serve LLM on GPU clusters.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.export --model gpt@champion

The export (GPT-2's ``config.json`` + ``model.safetensors``, see ``models.hf_export``) is
logged beside the version's package in its MLflow run (``exports/transformers``), hashed
like a package, and the version is tagged with its URI (``aimass.export.transformers``).
``--output DIR`` also writes it to a local folder, e.g. for
``GPT2LMHeadModel.from_pretrained(DIR)`` or ``vllm serve DIR``. Exporting again replaces it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from cluster.settings import get_settings
from jobs._private.cli import parse_config
from models import package
from models.exceptions import ModelNotFound
from models.gpt import GPT
from models.hf_export import export_gpt2
from models.registry import Registry
from models.weights import load_weights
from models.zoo import build_model


class ExportConfig(BaseModel):
    model: str = Field(description="Version to export: name@version or name@alias.")
    format: Literal["transformers"] = Field("transformers", description="The export format.")
    output: Path | None = Field(None, description="Also write the export to this folder.")


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ExportConfig, __doc__.split("\n")[0], argv)
    registry = Registry.from_settings(get_settings())
    try:
        info = registry.resolve(cfg.model)
    except ModelNotFound as err:
        sys.exit(f"[export] {err}")
    folder = registry.fetch(info)
    config = package.PackageConfig.read(folder)
    model = build_model(config.architecture, **config.options)
    if not isinstance(model, GPT):
        sys.exit(
            f"[export] {info.name} v{info.version} is a {config.architecture!r} model: "
            "the transformers export takes GPT versions"
        )
    load_weights(model, folder / package.WEIGHTS_FILE)
    with tempfile.TemporaryDirectory(prefix="aimass-export-") as tmp:
        exported = export_gpt2(model, Path(tmp) / cfg.format)
        uri = registry.log_export(info, exported, cfg.format)
        print(f"[export] {info.name} v{info.version} in {cfg.format} format: {uri}")
        if cfg.output is not None:
            export_gpt2(model, cfg.output)
            print(f"[export] written to {cfg.output}")


if __name__ == "__main__":
    main()
