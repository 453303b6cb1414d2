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

``--from digits@champion`` fine-tunes a registered version on the dataset (new or more
data: ``--set dataset=...``): the workers start from its weights (its verified safetensors)
and the new version records it as its parent. The preset defaults to one of the parent's
architecture (with its model options); a ``--config`` must build the same architecture with
the same options. The version goes to the parent's model unless ``--set register_as=...``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace

from cluster.provenance import git_sha
from cluster.settings import get_settings
from jobs._private.cli import JobParser, add_preset_flags, preset_config
from jobs._private.publish import gate_champion, publish
from jobs._private.runs import mlflow_run
from jobs._private.trainer import fit
from jobs.configs import TrainConfig, preset_for, presets_of
from models import package
from models.dataset import dataset_uri, read_manifest
from models.exceptions import ModelError
from models.refs import GIT_TAG, PARENT_TAG, ModelVersionInfo
from models.registry import Registry
from models.signature import LM
from models.zoo import architecture

RUN_NAME_TAG = "aimass.run_name"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Parent:
    """The version a fine-tune starts from, and how its weights were built."""

    info: ModelVersionInfo
    architecture: str
    options: dict

    @property
    def ref(self) -> str:
        return f"{self.info.name}@{self.info.version}"


def parent_version(registry: Registry, ref: str) -> Parent:
    """The version ``ref`` points at now, as its config.json (checked against the manifest
    the registry recorded) describes it; only config.json and the manifest are downloaded.

    Raises:
        ModelError: No such version, or one without weights to start from.
    """
    info = registry.resolve(ref)
    folder = registry.fetch(info, files=(package.CONFIG_FILE,))
    config = package.PackageConfig.read(folder)
    listed = json.loads((folder / package.MANIFEST_FILE).read_text())["files"]
    if package.WEIGHTS_FILE not in listed:  # an ensemble is one ONNX graph of its members
        raise ModelError(
            f"{info.name}@{info.version} ({config.architecture}) has no {package.WEIGHTS_FILE} "
            "to start from: fine-tune a version made by jobs.train or jobs.compress"
        )
    return Parent(info, config.architecture, config.options)


def parse(argv: list[str] | None, registry: Registry | None = None) -> TrainConfig:
    """The run's config from the command line; ``--from`` reads its version from
    ``registry`` (default: the cluster's)."""
    parser = JobParser(description=__doc__.split("\n")[0])
    add_preset_flags(parser, default=None, default_help="digits_cnn; with --from, the parent's")
    parser.add_argument("--name", help="run name (default: <config>-<timestamp>)")
    parser.add_argument(
        "--from",
        dest="from_",
        metavar="REF",
        help="fine-tune: start from this version's weights (name@version or name@alias)",
    )
    args = parser.parse_args(argv)
    if args.name is not None and not _RUN_NAME.fullmatch(args.name):
        parser.error(
            f"--name {args.name!r}: use 1-128 letters, digits, '.', '-' or '_' (it names the "
            "run's checkpoint folder)"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.from_ is None:
        config = args.config or "digits_cnn"
        cfg = preset_config(parser, config, args.set)
        return replace(cfg, name=args.name or f"{config}-{stamp}")
    try:
        parent = parent_version(registry or Registry.from_settings(get_settings()), args.from_)
        config = args.config or preset_for(parent.architecture, parent.options)
    except (ModelError, ValueError) as err:
        parser.error(f"--from {args.from_}: {err}")
    cfg = preset_config(parser, config, args.set)
    if args.config is None:  # the preset chosen for the parent builds it as it was built
        cfg = replace(cfg, model_options=parent.options)
    _check_fits(parser, cfg, parent, config, args)
    keys = {pair.partition("=")[0] for pair in args.set}
    return replace(
        cfg,
        name=args.name or f"{config}-from-{parent.info.name}-v{parent.info.version}-{stamp}",
        init_from=parent.ref,
        register_as=cfg.register_as if "register_as" in keys else parent.info.name,
    )


def _check_fits(parser: JobParser, cfg: TrainConfig, parent: Parent, config: str, args) -> None:
    """Refuse a config whose model the parent's weights do not fit, naming the flag."""
    source = f"--from {args.from_} ({parent.ref}, {parent.architecture})"
    if cfg.architecture != parent.architecture:
        given = next(
            (f"--set {p}" for p in reversed(args.set) if p.startswith("architecture=")),
            f"--config {config}",
        )
        parser.error(
            f"{given} trains {cfg.architecture}; {source}: its weights fit "
            f"{parent.architecture} only. Leave out --config, or use one of "
            f"{', '.join(presets_of(parent.architecture)) or 'none'}"
        )
    if cfg.model_options != parent.options:
        parser.error(
            f"--config {config} builds {cfg.architecture} with options {cfg.model_options}; "
            f"{source} was built with {parent.options}: leave out --config to take them"
        )


def check_resume(registry: Registry, cfg: TrainConfig) -> None:
    """A run submitted again under its name resumes from its checkpoint, whose weights came
    from the version its first submission started from: refuse another starting point, which
    the new version's lineage would name wrongly (an alias that has moved since, say)."""
    runs = registry.client.search_runs(
        [registry.experiment(cfg.register_as)],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{cfg.name}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    first = runs[0].data.params.get("init_from", "") if runs else cfg.init_from
    if first != cfg.init_from:
        was = f"fine-tunes {first}" if first else "trains from fresh weights"
        now = f"--from gives {cfg.init_from}" if cfg.init_from else "this one has no --from"
        again = f"--from {first}" if first else "no --from"
        raise SystemExit(
            f"[train] run {cfg.name} {was} (its first submission); {now}: resubmit with "
            f"{again} to resume it, or choose another --name"
        )


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
    settings = get_settings()
    registry = Registry.from_settings(settings)
    cfg = parse(argv, registry)
    manifest = read_manifest(dataset_uri(settings.storage_root, cfg.dataset))
    check_data(cfg, manifest)
    check_resume(registry, cfg)
    parent = registry.resolve(cfg.init_from) if cfg.init_from else None
    tags = {GIT_TAG: git_sha(), RUN_NAME_TAG: cfg.name}
    run_tags = tags | ({PARENT_TAG: cfg.init_from} if parent else {})
    with mlflow_run(registry, cfg.register_as, cfg.name, cfg.to_dict(), run_tags) as run_id:
        start = f", from {cfg.init_from}'s weights" if parent else ""
        print(
            f"[train] run {cfg.name} (mlflow {run_id}): {cfg.num_workers} workers, "
            f"ZeRO-{cfg.zero_stage}, {manifest.rows('train')} train rows{start}",
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
            parent=parent,
        )
        gate = cfg.champion_gate()
        champion, message = False, "no alias moved (promote=false)"
        if cfg.promote:
            champion, message = gate_champion(registry, version, metrics, gate)
    lineage = f" (parent {version.parent})" if version.parent else ""
    print(
        f"[train] registered {version.name} version {version.version}{lineage}; test "
        f"{gate.metric} {metrics[gate.metric]:.4f}; {message}",
        flush=True,
    )
    if champion:
        print(f"[train] alias champion -> {version.name} version {version.version}", flush=True)


if __name__ == "__main__":
    main()
