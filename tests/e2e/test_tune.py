"""Hyperparameter tuning as a user submits it (ASHA + Optuna over Ray Train trials), through
F7: the tuning driver is killed mid-run and the experiment restored with ``--resume``.

One experiment serves both tests, to keep the suite short: it is killed once a trial has
finished, resumed, and must then end like any other run (best trial registered as the
candidate, curves and summary saved) with every trial having ended exactly once. A second,
smaller experiment runs Population Based Training (``--scheduler pbt``), and a third a
two-point grid (``--search grid``).
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray._common.test_utils import wait_for_condition
from ray.job_submission import JobStatus, JobSubmissionClient

from cluster import storage
from cluster.settings import Settings
from jobs import TUNE_EXPERIMENT_TAG, TUNE_TRIAL_TAG
from jobs.ingest import IngestConfig, ingest
from models.refs import CANDIDATE, DATA_TAG, GIT_TAG
from models.registry import Registry

# An interrupted and resumed experiment of 4 small trials takes a few minutes; on a
# crowded 2-core machine (DeepSpeed's first JIT build included) it has taken ~15.
pytestmark = pytest.mark.timeout(1800)

NAME = "tune-e2e"
SAMPLES = 4
# A tiny budget: the smoke preset, one Ray Train worker and at most 2 epochs per trial.
TUNE_ARGS = ("--config", "digits_cnn_smoke", "--samples", str(SAMPLES), "--name", NAME)
TUNE_ARGS += ("--set", "num_workers=1", "--set", "epochs=2")


@dataclass(frozen=True)
class Interrupted:
    """What the test saw before killing the driver, and the resumed job's output."""

    finished_before: dict  # trial id -> its MLflow run, finished before the kill
    history_before: dict  # trial id -> its val_accuracy history then
    resumed_stdout: str


@pytest.fixture(scope="module")
def registry(local_cluster: Settings) -> Registry:
    # The digits shards, unless an earlier test ingested them (ingest is deterministic).
    if not storage.exists(f"{local_cluster.storage_root}/datasets/digits/manifest.json"):
        ingest(IngestConfig(), local_cluster.storage_root)
    return Registry.from_settings(local_cluster)


def trial_runs(registry: Registry) -> list:
    """Every MLflow run of the experiment's trials."""
    return registry.client.search_runs(
        [registry.experiment("digits")],
        filter_string=f"tags.`{TUNE_EXPERIMENT_TAG}` = '{NAME}' and tags.`{TUNE_TRIAL_TAG}` != ''",
    )


def finished_runs(registry: Registry) -> dict:
    runs = trial_runs(registry)
    return {r.data.tags[TUNE_TRIAL_TAG]: r for r in runs if r.info.status == "FINISHED"}


@pytest.fixture(scope="module")
def interrupted(local_cluster, registry, submit, repo_root) -> Interrupted:
    """Submit the experiment, SIGKILL its driver once a trial has finished, then resume."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    address = ["--address", local_cluster.dashboard_url, "--working-dir", "."]
    subprocess.run(
        [ray_cli, "job", "submit", *address, "--submission-id", NAME, "--no-wait", "--",
         "python", "-m", "jobs.tune", *TUNE_ARGS],
        cwd=repo_root, env=os.environ, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wait_for_condition(lambda: finished_runs(registry), timeout=1200, retry_interval_ms=1000)
    before = finished_runs(registry)
    history = {
        trial: registry.client.get_metric_history(run.info.run_id, "val_accuracy")
        for trial, run in before.items()
    }
    client = JobSubmissionClient(local_cluster.dashboard_url)
    os.kill(int(client.get_job_info(NAME).driver_info.pid), signal.SIGKILL)
    wait_for_condition(
        lambda: client.get_job_status(NAME) in (JobStatus.FAILED, JobStatus.STOPPED),
        timeout=120,
    )
    assert len(before) < SAMPLES, "every trial finished before the kill: nothing to restore"
    out = submit("python", "-m", "jobs.tune", "--name", NAME, "--resume").stdout
    assert f"[tune] resuming {NAME}:" in out, out[-3000:]
    return Interrupted(before, history, out)


def test_tune_registers_the_best_trial_as_candidate(interrupted, local_cluster, registry):
    out = interrupted.resumed_stdout
    candidate = registry.resolve(f"digits@{CANDIDATE}")
    assert f"alias candidate -> digits version {candidate.version}" in out, out[-3000:]
    trial_run = registry.client.get_run(candidate.run_id)
    parent = trial_run.data.tags["mlflow.parentRunId"]
    assert registry.client.get_run(parent).info.status == "FINISHED"
    assert candidate.tags[TUNE_EXPERIMENT_TAG] == NAME
    assert candidate.tags[TUNE_TRIAL_TAG] == trial_run.data.tags[TUNE_TRIAL_TAG]
    assert candidate.tags[DATA_TAG] and candidate.tags[GIT_TAG] and candidate.manifest_sha256

    folder = Path(local_cluster.storage_root) / "ray_tune" / NAME
    assert (folder / "tune_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (folder / "tune_summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    (best,) = [row for row in rows if row["trial"] == candidate.tags[TUNE_TRIAL_TAG]]
    assert len(rows) == SAMPLES and best["last_val_accuracy"] == rows[0]["last_val_accuracy"]
    assert "[tune] | trial | status |" in out  # the table, in the job log too
    logged = {a.path for a in registry.client.list_artifacts(parent)}
    assert {"tune_curves.png", "tune_summary.csv", "tune_summary.md"} <= logged


def test_killed_driver_restores_and_no_finished_trial_runs_again(
    interrupted, local_cluster, registry
):
    """F7: every trial ended exactly once; the ones finished before the kill never ran again."""
    runs = trial_runs(registry)
    trials = [r.data.tags[TUNE_TRIAL_TAG] for r in runs]
    assert len(trials) == SAMPLES == len(set(trials)), trials  # one run per trial, ever
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert set(statuses.values()) == {"FINISHED"}, statuses
    for run in runs:
        trial = run.data.tags[TUNE_TRIAL_TAG]
        if trial in interrupted.finished_before:
            assert run.info.end_time == interrupted.finished_before[trial].info.end_time
            after = registry.client.get_metric_history(run.info.run_id, "val_accuracy")
            before = interrupted.history_before[trial]
            assert [(m.step, m.value) for m in after] == [(m.step, m.value) for m in before]
    from ray.tune import ExperimentAnalysis  # Tune's own record of the experiment

    analysis = ExperimentAnalysis(str(Path(local_cluster.storage_root) / "ray_tune" / NAME))
    assert sorted(t.trial_id for t in analysis.trials) == sorted(trials)
    assert {t.status for t in analysis.trials} == {"TERMINATED"}


PBT_NAME = "tune-pbt-e2e"
# Two trials at once for 4 epochs, perturbed after every epoch. Seed 8 draws lrs 2e-5 and
# 9e-3 from the wide range: the slow trial trails from its first epoch on, so once the fast
# one has a checkpoint PBT restarts the slow one from it.
PBT_ARGS = ("--config", "digits_cnn_smoke", "--scheduler", "pbt", "--samples", "2",
            "--max-concurrent", "2", "--perturbation-interval", "1", "--seed", "8",
            "--space", "lr=loguniform:1e-6:1e-2", "--set", "num_workers=1", "--set", "epochs=4",
            "--name", PBT_NAME)  # fmt: skip
EXPLOIT = re.compile(
    r"\[tune\] trial (\S+) exploits (\S+)'s checkpoint of epoch (\d+), lr (\S+) -> (\S+)"
)


# 2 Train runs at once plus a restart: ~4 min here; the same margin for a crowded machine.
@pytest.mark.timeout(900)
def test_pbt_restarts_a_weak_trial_from_a_strong_ones_checkpoint(submit, registry):
    out = submit("python", "-m", "jobs.tune", *PBT_ARGS).stdout
    exploit = EXPLOIT.search(out)
    assert exploit, out[-5000:]
    trial, donor, epoch, lr_was, lr_now = exploit.groups()
    assert trial != donor
    # A new Train run for the trial: the donor's weights and epochs, the trial's new lr.
    assert (
        f"[train] starting from another run's checkpoint of epoch {epoch}: lr {lr_was} -> {lr_now} "
    ) in out, out[-5000:]
    after = re.search(rf"\[tune\] trial {trial} epoch (\d+)/4", out[exploit.end() :])
    assert after and int(after.group(1)) == int(epoch) + 1, out[exploit.start() :][:5000]

    candidate = registry.resolve(f"digits@{CANDIDATE}")
    assert f"alias candidate -> digits version {candidate.version}" in out, out[-3000:]
    assert candidate.tags[TUNE_EXPERIMENT_TAG] == PBT_NAME


GRID_NAME = "tune-grid-e2e"
# Two grid points, one epoch each, run side by side: ~2 min with the trials' start-up.
GRID_ARGS = ("--config", "digits_cnn_smoke", "--search", "grid", "--scheduler", "fifo",
             "--space", "lr=choice:1e-3,1e-2", "--max-concurrent", "2",
             "--set", "num_workers=1", "--set", "epochs=1", "--name", GRID_NAME)  # fmt: skip


@pytest.mark.timeout(600)
def test_grid_search_trials_every_declared_point(submit, registry, local_cluster):
    out = submit("python", "-m", "jobs.tune", *GRID_ARGS).stdout
    assert "2 trials of digits_cnn_smoke, fifo + grid x 1" in out, out[-3000:]
    started = re.findall(r"\[tune\] trial \S+ started: lr=([^,\s]+)", out)
    assert sorted(started) == ["0.001", "0.01"], out[-5000:]
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(Path(local_cluster.storage_root) / "ray_tune" / GRID_NAME))
    assert sorted(t.config["lr"] for t in analysis.trials) == [1e-3, 1e-2]
    assert {t.status for t in analysis.trials} == {"TERMINATED"}
    candidate = registry.resolve(f"digits@{CANDIDATE}")
    assert candidate.tags[TUNE_EXPERIMENT_TAG] == GRID_NAME
