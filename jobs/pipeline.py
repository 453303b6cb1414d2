"""One model's path as one job: ingest, train (or fine-tune), evaluate, compress, release.

Submit it to the cluster (run from the repository root):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.pipeline --config digits

Presets (``--config``, ``jobs.configs.pipeline``): ``digits``, ``digits_int8`` (releases the
int8 version), ``digits_fine_tune`` (from ``digits@champion``), ``digits_refresh`` (new
data: fine-tune the champion on it, release judged on fed-back labels), ``digits_smoke`` (no
gates to speak of, no release). ``--from REF`` fine-tunes that version instead of training
fresh weights; ``--dataset NAME`` works on another dataset, and ``--source URI`` ingests it
first from Parquet files (``jobs.ingest --source``): when new data arrives,

    ray job submit ... -- python -m jobs.pipeline --config digits_refresh --dataset digits_2026_12 --source s3://bucket/new/

Each stage is the job a user would submit, run as its own process
(``python -m jobs.<stage> ...``, printed before it starts) with the config's flags, its log
echoed here. The train stage registers without moving an alias (``promote=false``): the
evaluation's gates set ``candidate``, the release makes it ``champion``. A stage that exits
non-zero (a failed gate, a release rolled back) stops the pipeline with its reason and
status 1. What finished, and the versions made, is kept at
``<storage>/pipelines/<name>.json``: submitting again with the same ``--name`` resumes at
the first stage not finished (a run of another config under that name is refused).

``--on-alert AimassInputDrift`` arms the pipeline instead of starting it: the job waits,
asking the cluster's Prometheus every ``--poll-s`` seconds, until that alert fires for the
model the pipeline refreshes, then runs (a resumed run does not wait again). Submitted with
``--no-wait``, it is the drift-triggered retraining:

    ray job submit --no-wait ... -- python -m jobs.pipeline --config digits_refresh --source s3://bucket/latest/ --on-alert AimassInputDrift
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from enum import Enum

import httpx

from cluster import storage
from cluster.monitoring import alerts, prometheus
from cluster.settings import Settings, get_settings
from jobs._private.cli import JobParser, preset_config, validate
from jobs.configs import PIPELINES, PipelineConfig, Stage, pipeline, preset
from jobs.configs.pipeline import as_argv
from models.refs import ModelRef

MODULES = {Stage.EVALUATE_COMPRESSED: "evaluate"}
"""The job module of a stage, where it is not the stage's own name."""
REGISTERED = re.compile(r"\[(?:train|compress)\] registered (\S+) version (\d+)")
TAIL_LINES = 200


class Status(str, Enum):
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StageRecord:
    status: Status
    version: str | None = None
    """The version the stage registered or gated (``name@N``)."""
    detail: str = ""
    """Why a failed stage failed."""


@dataclass(frozen=True, slots=True)
class PipelineState:
    """One named run of a pipeline: its config's hash and what each stage did."""

    name: str
    config: str
    config_sha256: str
    records: dict[Stage, StageRecord] = field(default_factory=dict)

    def next_stage(self, plan: list[Stage]) -> Stage | None:
        """The first stage of ``plan`` not done (a failed one runs again), or None."""
        done = {s for s, r in self.records.items() if r.status == Status.DONE}
        return next((stage for stage in plan if stage not in done), None)

    def record(self, stage: Stage, record: StageRecord) -> PipelineState:
        return replace(self, records={**self.records, stage: record})

    def version(self, stage: Stage) -> str:
        record = self.records.get(stage)
        if record is None or record.version is None:
            raise ValueError(f"{self.name}: stage {stage.value} has made no version yet")
        return record.version

    def released(self) -> str:
        """The version the release serves: the compressed one, if there is one."""
        compressed = self.records.get(Stage.COMPRESS)
        return compressed.version if compressed else self.version(Stage.TRAIN)

    def to_json(self) -> str:
        records = {
            s.value: {"status": r.status.value, "version": r.version, "detail": r.detail}
            for s, r in self.records.items()
        }
        data = {"name": self.name, "config": self.config, "config_sha256": self.config_sha256}
        return json.dumps({**data, "records": records}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> PipelineState:
        data = json.loads(text)
        records = {
            Stage(s): StageRecord(Status(r["status"]), r["version"], r["detail"])
            for s, r in data["records"].items()
        }
        return cls(data["name"], data["config"], data["config_sha256"], records)


def config_sha256(cfg: PipelineConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json(by_alias=True).encode()).hexdigest()


def start_or_resume(saved: PipelineState | None, name: str, config: str, cfg) -> PipelineState:
    """The saved state of run ``name`` when it ran this very config, a fresh one if none.

    Raises:
        SystemExit: The name ran another config (or the same preset, changed since).
    """
    sha = config_sha256(cfg)
    if saved is None:
        return PipelineState(name, config, sha)
    if saved.config_sha256 != sha:
        raise SystemExit(
            f"[pipeline] {name} ran config {saved.config} as it was then "
            f"(sha256 {saved.config_sha256[:12]}); this is {config} (sha256 {sha[:12]}): "
            "choose another --name to run it"
        )
    return saved


def stage_argv(stage: Stage, cfg: PipelineConfig, state: PipelineState) -> list[str]:
    """The flags of ``stage``'s job: the config's, and those that chain it to the stages
    before (the dataset, the version to evaluate, compress or release)."""
    data = ["--dataset", cfg.dataset]
    if stage == Stage.INGEST:
        return [*data, *as_argv(cfg.ingest or {})]
    if stage == Stage.TRAIN:
        sets = [f"dataset={cfg.dataset}", "promote=false", *cfg.train_set]
        start = ["--from", cfg.from_] if cfg.from_ else []
        names = ["--config", cfg.train, "--name", f"{state.name}-train"]
        return [*names, *start, *(arg for pair in sets for arg in ("--set", pair))]
    if stage == Stage.EVALUATE:
        return ["--model", state.version(Stage.TRAIN), *data, *as_argv(cfg.evaluate)]
    if stage == Stage.COMPRESS:
        return ["--from", state.version(Stage.TRAIN), *data, *as_argv(cfg.compress or {})]
    if stage == Stage.EVALUATE_COMPRESSED:
        return ["--model", state.version(Stage.COMPRESS), *data, *as_argv(cfg.evaluate)]
    ref = ModelRef.parse(state.released())
    return ["--model", ref.name, "--candidate", str(ref.version), *as_argv(cfg.release or {})]


def made(stage: Stage, lines: list[str], state: PipelineState) -> str | None:
    """The version a finished stage registered (train, compress) or gated (evaluate)."""
    if stage in (Stage.TRAIN, Stage.COMPRESS):
        found = [m for line in lines if (m := REGISTERED.search(line))]
        if not found:
            raise ValueError(f"jobs.{stage.value} finished without registering a version")
        return f"{found[-1].group(1)}@{found[-1].group(2)}"
    if stage == Stage.EVALUATE:
        return state.version(Stage.TRAIN)
    if stage == Stage.EVALUATE_COMPRESSED:
        return state.version(Stage.COMPRESS)
    return state.released() if stage == Stage.RELEASE else None


def reason(lines: list[str], returncode: int) -> str:
    """Why a stage failed, from its log: its failed gates and its last line."""
    text = [line.strip() for line in lines if line.strip()]
    failed = [line for line in text if "FAILED" in line]
    last = text[-1] if text else f"exit status {returncode}"
    return "; ".join(dict.fromkeys([*failed, last]))  # the last line may be a failed gate


def run_stage(stage: Stage, argv: list[str]) -> tuple[int, list[str]]:
    """Run ``python -m jobs.<stage> argv`` (in this job's environment: the same cluster,
    storage and registry), echo its output; its exit status and its last lines."""
    command = [sys.executable, "-m", f"jobs.{MODULES.get(stage, stage.value)}", *argv]
    print(f"[pipeline] {stage.value}: {shlex.join(command[1:])}", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
    return proc.returncode, list(tail)


def preflight(cfg: PipelineConfig) -> None:
    """Check every stage's flags with its own job's config before the first stage runs: a
    typo in the release's should not wait for the training to end. Exits 2 naming it."""
    from jobs.compress import CompressConfig
    from jobs.evaluate import EvaluateConfig
    from jobs.ingest import IngestConfig
    from jobs.release import parse as release_parse

    def check(stage: Stage, model, values: dict) -> None:
        validate(JobParser(prog=f"jobs.pipeline: stage {stage.value}"), model, values)

    plan = cfg.stages()
    if Stage.INGEST in plan:
        check(Stage.INGEST, IngestConfig, {"dataset": cfg.dataset, **(cfg.ingest or {})})
    preset_config(JobParser(prog="jobs.pipeline: stage train"), cfg.train, cfg.train_set)
    check(Stage.EVALUATE, EvaluateConfig, {"model": "m@1", **cfg.evaluate})
    if Stage.COMPRESS in plan:
        check(Stage.COMPRESS, CompressConfig, {"from_": "m@1", **(cfg.compress or {})})
    if Stage.RELEASE in plan:  # its own parser: argparse's message, exit status 2
        release_parse(["--model", "m", *as_argv(cfg.release or {})])


def refreshed_model(cfg: PipelineConfig) -> str:
    """The model the pipeline's new version joins: ``--set register_as=``, else the
    fine-tuned version's model, else the training preset's."""
    for pair in cfg.train_set:
        key, _, value = pair.partition("=")
        if key == "register_as":
            return value
    return ModelRef.parse(cfg.from_).name if cfg.from_ else preset(cfg.train).register_as


def wait_for_alert(settings: Settings, alert: str, model: str, poll_s: float) -> dict:
    """Block until Prometheus holds ``alert`` firing for ``model``; that alert. Prometheus
    out of reach is waited out (said once), as a restart of it would be."""
    print(f"[pipeline] armed: waiting for {alert} on {model} ({prometheus.url(settings)})",
          flush=True)  # fmt: skip
    unreachable = False
    while True:
        try:
            held = prometheus.firing(settings)
        except httpx.HTTPError as err:
            if not unreachable:
                print(f"[pipeline] Prometheus unreachable ({err}); still waiting", flush=True)
            unreachable, held = True, []
        wanted = (alert, model, "firing")
        for found in held:
            labels = found["labels"]
            if (labels.get("alertname"), labels.get("model"), found["state"]) == wanted:
                return found
        time.sleep(poll_s)


def parse(argv: list[str] | None) -> tuple[str, str, PipelineConfig, argparse.Namespace]:
    """(run name, preset name, config, the trigger flags) from the command line."""
    parser = JobParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="digits", choices=sorted(PIPELINES),
                        help="pipeline preset (default: digits)")  # fmt: skip
    parser.add_argument("--name", help="run name (default: <config>-<timestamp>)")
    parser.add_argument("--from", dest="from_", metavar="REF",
                        help="fine-tune this version (name@version or name@alias)")  # fmt: skip
    parser.add_argument("--dataset", help="dataset to ingest, train and evaluate on")
    parser.add_argument("--source", metavar="URI",
                        help="new data to ingest first: Parquet (columns features, label)")  # fmt: skip
    shipped = [rule.name for rule in alerts.rules(0, 0)]
    parser.add_argument("--on-alert", metavar="ALERT", choices=shipped,
                        help=f"wait until this alert fires for the model: {', '.join(shipped)}")  # fmt: skip
    parser.add_argument("--poll-s", type=float, default=10.0,
                        help="--on-alert: seconds between asks to Prometheus (default 10)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.on_alert and not prometheus.enabled(get_settings()):
        parser.error("--on-alert: this cluster runs no Prometheus to fire it (see `aimass up`)")
    if args.poll_s <= 0:
        parser.error(f"--poll-s {args.poll_s:g}: give a number of seconds above 0")
    cfg = pipeline(args.config)
    given = {k: getattr(args, k) for k in ("from_", "dataset") if getattr(args, k)}
    if args.source:
        if cfg.ingest is None:
            parser.error(f"--source: pipeline {args.config} has no ingest stage")
        given["ingest"] = cfg.ingest | {"source": args.source}
    if given:
        values = cfg.model_dump() | given
        cfg = validate(parser, PipelineConfig, values, flags={"from_": "--from"})
    name = args.name or f"{args.config}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}", name):
        parser.error(f"--name {name!r}: use letters, digits, '.', '-' or '_'")
    return name, args.config, cfg, args


def load(uri: str) -> PipelineState | None:
    return (
        PipelineState.from_json(storage.read_bytes(uri).decode()) if storage.exists(uri) else None
    )


def save(uri: str, state: PipelineState) -> None:
    storage.write_bytes(uri, state.to_json().encode())  # whole or not at all


def run(state: PipelineState, cfg: PipelineConfig, uri: str) -> PipelineState:
    """Run the stages from the first not done, saving the state after each; the last state.

    Raises:
        SystemExit: A stage failed (its reason is saved with it).
    """
    plan = cfg.stages()
    for stage in plan[plan.index(state.next_stage(plan)) :]:
        code, lines = run_stage(stage, stage_argv(stage, cfg, state))
        if code != 0:
            why = reason(lines, code)
            save(uri, state.record(stage, StageRecord(Status.FAILED, detail=why)))
            raise SystemExit(
                f"[pipeline] {state.name} stopped at {stage.value}: {why}. Submit it again "
                f"with --name {state.name} to resume at {stage.value}."
            )
        state = state.record(stage, StageRecord(Status.DONE, made(stage, lines, state)))
        save(uri, state)
        print(f"[pipeline] {stage.value} done {state.records[stage].version or ''}", flush=True)
    return state


def main(argv: list[str] | None = None) -> None:
    name, config, cfg, trigger = parse(argv)
    preflight(cfg)
    settings = get_settings()
    uri = storage.join(settings.storage_root, "pipelines", f"{name}.json")
    saved = load(uri)
    state = start_or_resume(saved, name, config, cfg)
    first = state.next_stage(cfg.stages())
    if first is None:
        print(f"[pipeline] {name}: every stage finished already ({state.released()})")
        return
    if trigger.on_alert and not state.records:
        model = refreshed_model(cfg)
        fired = wait_for_alert(settings, trigger.on_alert, model, trigger.poll_s)
        summary = fired.get("annotations", {}).get("summary", "")
        print(f"[pipeline] {trigger.on_alert} fired on {model}: {summary}", flush=True)
    how = "resuming" if saved else "starting"
    print(f"[pipeline] {name}: {how} at {first.value} (state: {uri})", flush=True)
    state = run(state, cfg, uri)
    stages = ", ".join(s.value for s in cfg.stages())
    print(f"[pipeline] {name} finished: {state.released()} through {stages}", flush=True)


if __name__ == "__main__":
    main()
