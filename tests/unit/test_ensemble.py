"""Ensembles as one ONNX graph (models.ensemble): each rule's logits, run by ONNX Runtime,
equal the rule computed from the members' own ONNX outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from models.digits import DigitsCNN
from models.ensemble import combine, fit_stack
from models.evaluation import softmax
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session, export_onnx


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[onnx.ModelProto]:
    folder = tmp_path_factory.mktemp("members")
    made = []
    for seed in range(3):
        torch.manual_seed(seed)
        path = export_onnx(DigitsCNN(), torch.rand(2, 64) * 16, folder / f"m{seed}.onnx")
        made.append(onnx.load(path))
    return made


def _run(model: onnx.ModelProto, x: np.ndarray, tmp_path) -> np.ndarray:
    path = tmp_path / "ensemble.onnx"
    onnx.save(model, path)
    return cpu_session(path, threads=1).run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _probabilities(members, x, tmp_path) -> list[np.ndarray]:
    out = []
    for i, m in enumerate(members):
        onnx.save(m, tmp_path / f"one{i}.onnx")
        out.append(
            softmax(
                cpu_session(tmp_path / f"one{i}.onnx", 1).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            )
        )
    return out


X = (np.random.default_rng(0).random((32, 64)) * 16).astype(np.float32)


def test_mean_is_the_weighted_mean_of_probabilities(members, tmp_path):
    probs = _probabilities(members, X, tmp_path)
    got = softmax(_run(combine(members, "mean", 10, weights=[1, 2, 1]), X, tmp_path))
    np.testing.assert_allclose(got, (probs[0] + 2 * probs[1] + probs[2]) / 4, atol=1e-5)


def test_vote_takes_the_most_votes_and_breaks_ties_by_mean_probability(members, tmp_path):
    probs = _probabilities(members, X, tmp_path)
    votes = sum(np.eye(10)[p.argmax(1)] for p in probs)
    expected = (votes + sum(probs) / 3).argmax(1)
    assert (_run(combine(members, "vote", 10), X, tmp_path).argmax(1) == expected).all()


def test_stack_is_a_logistic_regression_on_the_members_probabilities(members, tmp_path):
    probs = _probabilities(members, X, tmp_path)
    labels = np.arange(len(X)) % 10
    stack = fit_stack(probs, labels)
    got = _run(combine(members, "stack", 10, stack=stack), X, tmp_path)
    np.testing.assert_allclose(got, np.concatenate(probs, 1) @ stack.weight + stack.bias, atol=1e-4)


def test_bad_ensembles_are_refused(members):
    with pytest.raises(ValueError, match="at least 2"):
        combine(members[:1], "mean", 10)
    with pytest.raises(ValueError, match="Unknown rule"):
        combine(members, "median", 10)
    with pytest.raises(ValueError, match="weight"):
        combine(members, "mean", 10, weights=[1, -1, 1])
    with pytest.raises(ValueError, match="fitted Stack"):
        combine(members, "stack", 10)


def test_the_job_registers_an_ensemble_measured_against_its_members(
    settings_env, make_package, capsys
):
    from jobs import ensemble
    from jobs.ingest import IngestConfig, ingest
    from models import package
    from models.registry import Registry

    ingest(IngestConfig(), settings_env.storage_root)
    registry = Registry.from_settings(settings_env)
    for i in range(3):
        run = registry.client.create_run(registry.experiment("digits"))
        registry.register("digits", run.info.run_id, make_package(f"member{i}"))
    ensemble.main(["--members", "digits@1,digits@2,digits@3", "--rule", "stack"])
    out = capsys.readouterr().out
    assert "registered digits version 4" in out and out.count("digits@") >= 3, out
    folder = registry.fetch(registry.get("digits", 4))
    config = package.PackageConfig.read(folder)
    assert config.architecture == "ensemble" and config.options["rule"] == "stack"
    assert config.options["members"] == ["digits@1", "digits@2", "digits@3"]
    assert 0 <= config.metrics["accuracy"] <= 1 and "model.onnx" in {
        p.name for p in folder.iterdir()
    }
    with pytest.raises(SystemExit):
        ensemble.main(["--members", "digits@1"])
    assert "an ensemble needs at least 2 members" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="One weight per member"):
        ensemble.main(["--members", "digits@1,digits@2", "--weights", "1,2,3"])


def test_an_ensembles_answer_names_its_members(client, key):
    from gateway_doubles import ROW, post

    pinned = post(client, "/v1/models/digits/versions/5/predict", {"instances": [ROW]}, key)
    assert pinned.json()["members"] == ["digits@3", "digits@4"]
    plain = post(client, "/v1/models/digits/predict", {"instances": [ROW]}, key)
    assert "members" not in plain.json()
