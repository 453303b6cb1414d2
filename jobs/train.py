"""Train a model with Ray Train + DeepSpeed, then evaluate, export, register and gate it.

Submit it to the cluster (run from the repository root):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train --config digits_cnn

Presets (``--config``): the digits classifiers (``digits_cnn``, ``_zero1``, ``_zero3``,
``_offload``, ``digits_transformer``) and GPT language models on the standard library's
sources (``gpt_tiny``, ``gpt_tiny_zero1``, ``gpt_tiny_zero3``, ``gpt_tiny_offload`` on CPU;
``gpt_125m``, ``gpt_1b3``, ``gpt_6b7`` for GPU clusters).

``--set key=value`` overrides a field of the preset (``--set epochs=5 --set zero_stage=1``);
``--set datacenter=eu-west`` keeps the workers and the data reads in that datacenter.
To record the commit in the model's lineage, add
``--runtime-env-json '{"env_vars": {"AIMASS_GIT_SHA": "'$(git rev-parse HEAD)'"}}'``.
``--name`` names the run; submitting again with the same name resumes it from its last
checkpoint instead of starting over.
"""

from __future__ import annotations

import time
from dataclasses import replace

from cluster.provenance import git_sha
from cluster.settings import get_settings
from jobs._private.cli import JobParser, add_preset_flags, preset_config
from jobs._private.publish import gate_champion, publish
from jobs._private.runs import mlflow_run
from jobs._private.trainer import fit
from jobs.configs import TrainConfig
from models.dataset import dataset_uri, read_manifest
from models.refs import GIT_TAG
from models.registry import Registry
from models.signature import LM
from models.zoo import architecture


def parse(argv: list[str] | None) -> TrainConfig:
    parser = JobParser(description=__doc__.split("\n")[0])
    add_preset_flags(parser, default="digits_cnn")
    parser.add_argument("--name", help="run name (default: <config>-<timestamp>)")
    args = parser.parse_args(argv)
    cfg = preset_config(parser, args.config, args.set)
    return replace(cfg, name=args.name or f"{args.config}-{time.strftime('%Y%m%d-%H%M%S')}")


def check_data(cfg: TrainConfig, manifest) -> None:
    """Fail before any worker starts when the data cannot feed the model."""
    if cfg.task == LM:
        if "block_size" not in manifest.data:
            raise SystemExit(
                f"Dataset {cfg.dataset!r} holds no token sequences; {cfg.name} is a language model."
            )
        context = architecture(cfg.architecture).signature_for(cfg.model_options).input_shape[0]
        if manifest.data["block_size"] > context:
            raise SystemExit(
                f"Dataset {cfg.dataset!r} has sequences of {manifest.data['block_size']} tokens; "
                f"the model's context is {context}. Ingest with --block-size {context} or raise "
                "the model's block_size."
            )
    elif "block_size" in manifest.data:
        raise SystemExit(
            f"Dataset {cfg.dataset!r} holds token sequences; {cfg.name} is a classifier."
        )


def main(argv: list[str] | None = None) -> None:
    cfg = parse(argv)
    settings = get_settings()
    manifest = read_manifest(dataset_uri(settings.storage_root, cfg.dataset))
    check_data(cfg, manifest)
    registry = Registry.from_settings(settings)
    tags = {GIT_TAG: git_sha(), "aimass.run_name": cfg.name}
    with mlflow_run(registry, cfg.register_as, cfg.name, cfg.to_dict(), tags) as run_id:
        print(
            f"[train] run {cfg.name} (mlflow {run_id}): {cfg.num_workers} workers, "
            f"ZeRO-{cfg.zero_stage}, {manifest.rows('train')} train rows",
            flush=True,
        )
        t0 = time.monotonic()
        model = fit(cfg, manifest, settings, run_id)
        print(f"[train] training finished in {time.monotonic() - t0:.0f} s", flush=True)
        version, metrics = publish(
            model,
            cfg.architecture,
            cfg.model_options,
            cfg.register_as,
            manifest,
            registry,
            run_id,
            tags,
        )
        gate = cfg.champion_gate()
        champion, message = gate_champion(registry, version, metrics, gate)
    print(
        f"[train] registered {version.name} version {version.version}; test {gate.metric} "
        f"{metrics[gate.metric]:.4f}; {message}",
        flush=True,
    )
    if champion:
        print(f"[train] alias champion -> {version.name} version {version.version}", flush=True)


if __name__ == "__main__":
    main()
