import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from cluster.cli.aimass import main
from models import lineage, package
from models import registry as registry_module
from models.exceptions import ArtifactIntegrityError, InvalidModelRef, ModelNotFound
from models.refs import CANDIDATE, CHAMPION, DATA_TAG, GIT_TAG, ModelRef
from models.registry import Registry


@pytest.fixture
def registry(tmp_path):
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


def _register(registry, make_package, name="digits", tag="a", accuracy=0.9, **kwargs):
    run = registry.client.create_run(registry.experiment(name))
    folder = make_package(f"pkg-{name}-{tag}", accuracy)
    return registry.register(name, run.info.run_id, folder, **kwargs)


def test_register_alias_resolve_and_fetch(registry, make_package):
    v1 = _register(registry, make_package, tag="1")
    v2 = _register(registry, make_package, tag="2")
    assert (v1.version, v2.version) == (1, 2)
    registry.set_alias("digits", CHAMPION, 1)
    assert registry.resolve("digits").version == 1  # a bare name means the champion
    registry.set_alias("digits", CHAMPION, 2)
    assert registry.resolve("digits@champion").version == 2
    assert registry.resolve("digits@1").version == 1
    folder = registry.fetch(registry.resolve("digits@champion"))
    assert {p.name for p in folder.iterdir()} >= {"model.onnx", "model.safetensors", "config.json"}
    assert package.PackageConfig.read(folder).metrics == {"accuracy": 0.9}


def test_tampered_artifact_is_refused(registry, make_package):
    info = _register(registry, make_package)
    folder = registry.fetch(info)
    (folder / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(ArtifactIntegrityError, match="model.onnx"):
        package.verify(folder, info.manifest_sha256)
    # rewriting the manifest to match does not help: the registry holds its hash
    package.write_manifest(folder)
    with pytest.raises(ArtifactIntegrityError, match="manifest"):
        package.verify(folder, info.manifest_sha256)


def test_unknown_versions_and_aliases(registry, make_package):
    _register(registry, make_package)
    with pytest.raises(ModelNotFound, match="no version 7"):
        registry.resolve("digits@7")
    with pytest.raises(ModelNotFound, match="alias 'candidate'"):
        registry.resolve("digits@candidate")


@pytest.mark.parametrize(
    "ref", ["../etc", "a/b", "file:///etc/passwd", "http://x", "digits@../x", "", "1digits", "d@"]
)
def test_unsafe_references_are_refused_before_any_lookup(ref):
    with pytest.raises(InvalidModelRef):
        ModelRef.parse(ref)


def test_model_errors_survive_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(ModelNotFound("gone", model="digits", version="3")))
    assert isinstance(err, ModelNotFound) and err.context == {"model": "digits", "version": "3"}


def test_lineage_parent_is_recorded_and_shown_in_diff(registry, make_package):
    v1 = _register(registry, make_package, tag="1", tags={DATA_TAG: "d1", GIT_TAG: "g1"})
    registry.client.log_metric(v1.run_id, "val_loss", 0.5)
    # a caller's tags cannot forge the lineage the registry writes itself
    v2 = _register(registry, make_package, tag="2", accuracy=0.95, parent=v1,
        tags={DATA_TAG: "d2", GIT_TAG: "g2", "aimass.parent": "forged@9"},
    )  # fmt: skip
    assert (v1.parent, v2.parent) == (None, "digits@1")
    assert registry.get("digits", 2).parent == "digits@1"

    diff = lineage.diff(registry, "digits@1", ModelRef("digits", version=2))
    assert diff["lineage"]["parent"] == (None, "digits@1")
    assert diff["lineage"]["run_id"] == (v1.run_id, v2.run_id)
    assert diff["lineage"]["data_manifest_sha256"] == ("d1", "d2")
    assert diff["lineage"]["git_sha"] == ("g1", "g2")
    assert diff["metrics"]["accuracy"] == (0.9, 0.95)
    assert diff["run_metrics"]["val_loss"] == (0.5, None)


def test_diff_refuses_a_tampered_config(registry, make_package):
    info = _register(registry, make_package)
    config = Path(info.source) / package.CONFIG_FILE  # the stored artifact itself
    data = json.loads(config.read_text())
    data["metrics"]["accuracy"] = 1.0
    config.write_text(json.dumps(data))
    with pytest.raises(ArtifactIntegrityError, match="config.json"):
        lineage.diff(registry, "digits@1", "digits@1")


def test_alias_history_records_each_move_in_order(registry, make_package):
    for tag in ("1", "2"):
        _register(registry, make_package, tag=tag)
    first = registry.set_alias("digits", CHAMPION, 1, reason="first   model\n")
    registry.promote("digits", 1, alias=CANDIDATE)
    registry.promote("digits", 2, reason="better accuracy")
    assert registry.promote("digits", 2) is None  # no move, no event

    history = registry.alias_history("digits", CHAMPION)
    assert [(e.from_version, e.to_version, e.reason) for e in history] == [
        (None, 1, "first model"),
        (1, 2, "better accuracy"),
    ]
    assert history[0] == first
    assert "@" in first.who
    assert datetime.fromisoformat(first.when).tzinfo == timezone.utc
    assert [e.alias for e in registry.alias_history("digits")] == [CHAMPION, CANDIDATE, CHAMPION]


def test_alias_event_fits_the_tag_column(registry, make_package):
    _register(registry, make_package)
    event = registry.promote("digits", 1, reason="x" * 20_000)
    assert len(event.to_json()) < 5000  # VARCHAR(5000) in MLflow's SQL schema
    assert registry.alias_history("digits") == [event]


def test_rollback_returns_to_the_previous_champion_and_is_recorded(registry, make_package):
    for tag in ("1", "2", "3"):
        _register(registry, make_package, tag=tag)
    for version in (1, 2, 3):
        registry.promote("digits", version)

    event = registry.rollback("digits", reason="v3 drifts on night traffic")
    assert (event.from_version, event.to_version) == (3, 2)
    assert "rollback" in event.reason and "v3 drifts on night traffic" in event.reason
    assert registry.resolve("digits").version == 2
    assert registry.alias_history("digits", CHAMPION)[-1] == event
    # a rollback is a move like any other: rolling back again undoes it
    assert registry.rollback("digits").to_version == 3
    assert len(registry.alias_history("digits", CHAMPION)) == 5


def test_rollback_without_an_earlier_version_fails_clearly(registry, make_package):
    _register(registry, make_package)
    with pytest.raises(ModelNotFound, match="was never moved.*no earlier version"):
        registry.rollback("digits")
    registry.promote("digits", 1)
    with pytest.raises(ModelNotFound, match="no earlier version"):
        registry.rollback("digits")
    assert registry.resolve("digits").version == 1
    assert len(registry.alias_history("digits")) == 1


def test_promote_an_unknown_version_moves_and_records_nothing(registry, make_package):
    _register(registry, make_package)
    with pytest.raises(ModelNotFound, match="no version 5"):
        registry.promote("digits", 5)
    assert registry.alias_history("digits") == []
    with pytest.raises(ModelNotFound, match="'nope'"):
        registry.alias_history("nope")


def test_list_models_and_versions(registry, make_package):
    for tag in ("1", "2"):
        _register(registry, make_package, tag=tag)
    _register(registry, make_package, name="iris", tag="i")
    registry.promote("digits", 1)
    registry.promote("digits", 2, alias=CANDIDATE)
    summaries = registry.list_models()
    assert [(m.name, m.latest_version, m.aliases) for m in summaries] == [
        ("digits", 2, {CANDIDATE: 2, CHAMPION: 1}),
        ("iris", 1, {}),
    ]
    versions = registry.versions("digits")
    assert [(v.version, v.aliases) for v in versions] == [(1, (CHAMPION,)), (2, (CANDIDATE,))]
    with pytest.raises(ModelNotFound):
        registry.versions("nope")


def _busy(message="(sqlite3.OperationalError) database is locked"):
    return MlflowException(message, error_code="TEMPORARILY_UNAVAILABLE")


def test_retry_waits_out_a_busy_database_and_gives_up_in_bounds(monkeypatch):
    sleeps = []
    monkeypatch.setattr(registry_module.time, "sleep", sleeps.append)
    outcomes = [_busy(), _busy(), "done"]

    def flaky():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert registry_module._retry(flaky) == "done"
    assert len(sleeps) == 2 and sleeps[0] < sleeps[1]

    calls = []

    def always_busy():
        calls.append(1)
        raise _busy()

    with pytest.raises(MlflowException, match="database is locked"):
        registry_module._retry(always_busy)
    assert len(calls) == len(registry_module._RETRY_DELAYS_S) + 1

    def not_found():
        calls.append(1)
        raise MlflowException("no such model", error_code="RESOURCE_DOES_NOT_EXIST")

    calls.clear()
    with pytest.raises(MlflowException, match="no such model"):
        registry_module._retry(not_found)
    assert len(calls) == 1  # only a busy database is worth waiting for


@pytest.fixture
def cli_registry(settings_env):
    """The registry `aimass models` opens, under a temp AIMASS_HOME."""
    return Registry.from_settings(settings_env)


def test_cli_models_list_show_promote_rollback_history(cli_registry, make_package, capsys):
    v1 = _register(cli_registry, make_package, tag="1", tags={GIT_TAG: "abc123"})
    _register(cli_registry, make_package, tag="2", parent=v1)

    main(["models", "promote", "digits", "1", "--reason", "baseline"])
    assert "digits@champion: (new) -> 1 (baseline)" in capsys.readouterr().out
    main(["models", "promote", "digits", "2"])
    main(["models", "list"])
    out = capsys.readouterr().out
    assert "digits" in out and "champion=2" in out

    main(["models", "show", "digits"])
    out = capsys.readouterr().out
    assert "digits@1" in out and "abc123" in out  # v2's parent, v1's commit
    main(["models", "show", "digits@champion"])
    out = capsys.readouterr().out
    assert "digits version 2" in out and "digits@1" in out

    main(["models", "rollback", "digits", "--reason", "regression"])
    assert "2 -> 1" in capsys.readouterr().out
    assert cli_registry.resolve("digits").version == 1
    main(["models", "history", "digits", "--alias", "champion"])
    out = capsys.readouterr().out
    assert out.index("baseline") < out.index("regression")

    main(["models", "diff", "digits@1", "digits@2"])
    out = capsys.readouterr().out
    assert "accuracy" in out and "0.9000" in out and "parent" in out


def test_cli_models_errors_are_one_line_and_exit_1(cli_registry, make_package, capsys):
    _register(cli_registry, make_package)
    for argv, message in [
        (["show", "digits@7"], "no version 7"),
        (["show", "nope"], "No registered model 'nope'"),
        (["promote", "digits", "9"], "no version 9"),
        (["rollback", "digits"], "no earlier version"),
        (["diff", "digits@1", "../etc"], "Invalid model name"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["models", *argv])
        out = capsys.readouterr().out
        assert exit_info.value.code == 1, argv
        assert out.startswith("error:") and message in " ".join(out.split()), (argv, out)
