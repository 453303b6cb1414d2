"""Compress, evaluate, promote and roll back: the lifecycle jobs as a user submits them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from models import package
from models.refs import CANDIDATE, CHAMPION


def comparison(stdout: str) -> dict:
    (line,) = [x for x in stdout.splitlines() if "[compress] comparison " in x]
    return json.loads(line.split("[compress] comparison ", 1)[1])


def compress(submit, method: str, *flags: str) -> str:
    args = ["--from", "digits@champion", "--method", method, *flags]
    return submit("python", "-m", "jobs.compress", *args).stdout


def registered_version(stdout: str) -> int:
    return int(re.search(r"\[compress\] registered digits version (\d+)", stdout).group(1))


@pytest.fixture(scope="module")
def int8_version(served, submit) -> int:
    out = compress(submit, "int8_dynamic")
    row = comparison(out)
    assert row["parent"] == f"digits@{served.version}"
    assert row["size_ratio"] < 0.7  # int8 weights: the file shrinks
    assert abs(row["accuracy_delta"]) <= 0.01
    return registered_version(out)


def test_compressed_version_records_its_parent_and_moves_no_alias(served, int8_version):
    info = served.registry.get("digits", int8_version)
    assert info.parent == f"digits@{served.version}"
    assert CHAMPION not in info.aliases
    config = package.PackageConfig.read(served.registry.fetch(info))
    assert config.extra["compression"] == "int8_dynamic"


def test_structured_pruning_really_shrinks_the_model(served, submit):
    out = compress(submit, "prune_structured", "--keep", "0.5", "--epochs", "2")
    row = comparison(out)
    assert row["size_ratio"] < 0.6
    assert row["after"]["accuracy"] >= 0.9


def test_distilled_student_is_trained_with_ray_train_and_names_its_teacher(served, submit):
    out = compress(submit, "distill", "--student-epochs", "6")
    row = comparison(out)
    assert row["size_ratio"] < 0.35  # the default student is a quarter of the teacher
    assert row["after"]["accuracy"] >= 0.6  # it learns (chance: 0.1); quality is for benches
    info = served.registry.get("digits", registered_version(out))
    assert info.parent == f"digits@{served.version}"


def test_evaluate_gates_then_sets_candidate(served, submit, int8_version):
    out = submit("python", "-m", "jobs.evaluate", "--model", f"digits@{int8_version}").stdout
    assert "gate accuracy vs champion" in out and "FAILED" not in out
    assert served.registry.resolve("digits@candidate").version == int8_version


def test_a_failing_gate_says_which_and_by_how_much_and_moves_nothing(served, submit, int8_version):
    before = served.registry.resolve(f"digits@{CANDIDATE}").version
    args = ["--model", f"digits@{int8_version}", "--min-accuracy", "1.0"]
    proc = submit("python", "-m", "jobs.evaluate", *args, expect_ok=False)
    assert proc.returncode != 0
    assert re.search(r"gate accuracy: [\d.]+ >= 1 FAILED by [\d.]+", proc.stdout)
    assert served.registry.resolve(f"digits@{CANDIDATE}").version == before


def test_promote_then_rollback_with_the_cli(served, int8_version):
    aimass = str(Path(sys.executable).with_name("aimass"))

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [aimass, "models", *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    cli("promote", "digits", str(int8_version), "--reason", "e2e: int8 passed its gates")
    assert served.registry.resolve("digits@champion").version == int8_version
    cli("rollback", "digits", "--reason", "e2e: back to the trained model")
    assert served.registry.resolve("digits@champion").version == served.version
    history = cli("history", "digits", "--alias", "champion")
    assert "e2e: int8 passed its gates" in history and "e2e: back to the trained model" in history


def test_train_submission_applies_set_overrides_and_refuses_a_bad_one(served, submit):
    """The documented train command with ``--set`` overrides of a preset, cast to its typed
    config (an int, a bool and a str), registered under a name of its own so that the
    ``digits`` champion the other tests use stays where it is."""
    out = submit("python", "-m", "jobs.train", "--config", "digits_cnn_smoke",
                 "--name", "smoke-e2e", "--set", "epochs=2", "--set", "num_workers=1",
                 "--set", "augment=false", "--set", "register_as=digits_smoke").stdout  # fmt: skip
    assert "[train] run smoke-e2e (mlflow " in out and "1 workers, ZeRO-2" in out, out[-3000:]
    assert "[train] epoch 2/2 " in out and "[train] epoch 3/" not in out, out[-3000:]
    assert "[train] registered digits_smoke version 1" in out, out[-3000:]
    assert served.registry.resolve("digits@champion").version == served.version
    bad = submit("python", "-m", "jobs.train", "--config", "digits_cnn_smoke",
                 "--set", "use_gpu=ture", expect_ok=False)  # fmt: skip
    log = bad.stdout + bad.stderr  # the job's log, and the ray CLI's own lines
    assert bad.returncode != 0
    assert "error: --set use_gpu='ture': Input should be a valid boolean" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_an_ensemble_is_measured_gated_and_served_like_any_version(served, submit, int8_version):
    members = f"digits@{served.version},digits@{int8_version}"
    out = submit("python", "-m", "jobs.ensemble", "--members", members, "--rule", "vote").stdout
    assert f"vote of {members.replace(',', ', ')}: test accuracy" in out, out[-3000:]
    version = int(re.search(r"\[ensemble\] registered digits version (\d+)", out).group(1))
    accuracy = float(re.search(r"ensemble  ([\d.]+) ", out).group(1))
    assert accuracy >= 0.95, out[-3000:]  # two ~0.98 members voting
    gated = submit(
        "python", "-m", "jobs.evaluate", "--model", f"digits@{version}", "--promote", "false"
    ).stdout
    assert "gate accuracy vs champion" in gated and "FAILED" not in gated, gated[-3000:]
    answer = httpx.post(
        f"{served.settings.serve_url}/v1/models/digits/versions/{version}/predict",
        json={"instances": [[3.0] * 64]},
        headers={"X-API-Key": served.key},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["members"] == members.split(",")
    assert served.registry.resolve("digits@champion").version == served.version
