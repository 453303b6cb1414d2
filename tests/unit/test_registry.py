import pytest
import torch

from models import package
from models.exceptions import ArtifactIntegrityError, InvalidModelRef, ModelNotFound
from models.onnx_export import export_onnx
from models.registry import CHAMPION, ModelRef, Registry
from models.weights import save_weights
from models.zoo import architecture, build_model


@pytest.fixture
def registry(tmp_path):
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


def _package(folder, accuracy=0.9):
    folder.mkdir(parents=True)
    model = build_model("digits_cnn")
    save_weights(model, folder / package.WEIGHTS_FILE)
    export_onnx(model, torch.rand(2, 64), folder / package.ONNX_FILE)
    package.PackageConfig(
        "digits_cnn", architecture("digits_cnn").signature, {}, {"accuracy": accuracy}
    ).write(folder)
    return folder


def _register(registry, tmp_path, name="digits", tag="a"):
    run = registry.client.create_run(registry.experiment(name))
    return registry.register(name, run.info.run_id, _package(tmp_path / f"pkg-{tag}"))


def test_register_alias_resolve_and_fetch(registry, tmp_path):
    v1 = _register(registry, tmp_path, tag="1")
    v2 = _register(registry, tmp_path, tag="2")
    assert (v1.version, v2.version) == (1, 2)
    registry.set_alias("digits", CHAMPION, 1)
    assert registry.resolve("digits").version == 1  # a bare name means the champion
    registry.set_alias("digits", CHAMPION, 2)
    assert registry.resolve("digits@champion").version == 2
    assert registry.resolve("digits@1").version == 1
    folder = registry.fetch(registry.resolve("digits@champion"))
    assert {p.name for p in folder.iterdir()} >= {"model.onnx", "model.safetensors", "config.json"}
    assert package.PackageConfig.read(folder).metrics == {"accuracy": 0.9}


def test_tampered_artifact_is_refused(registry, tmp_path):
    info = _register(registry, tmp_path)
    folder = registry.fetch(info)
    (folder / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(ArtifactIntegrityError, match="model.onnx"):
        package.verify(folder, info.manifest_sha256)
    # rewriting the manifest to match does not help: the registry holds its hash
    package.write_manifest(folder)
    with pytest.raises(ArtifactIntegrityError, match="manifest"):
        package.verify(folder, info.manifest_sha256)


def test_unknown_versions_and_aliases(registry, tmp_path):
    _register(registry, tmp_path)
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
