"""The layer contracts hold, and the gateway process stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from importlinter import api

REPO = Path(__file__).resolve().parents[2]


def _contracts() -> list[dict]:
    """The contracts of pyproject.toml, as import-linter reads them."""
    return api.read_configuration(str(REPO / "pyproject.toml"))["contracts_options"]


def test_the_bottom_layer_lists_every_module_of_the_cluster_core():
    """import-linter's layers cannot nest, so the core is listed module by module (a
    subpackage such as cluster.edge as one): a core module left out would escape the
    contract."""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    listed = {m.strip() for m in layers[-1].replace("|", ":").split(":")}
    cluster = REPO / "cluster"
    core = {f"cluster.{p.stem}" for p in cluster.glob("*.py") if p.stem != "__init__"}
    core |= {f"cluster.{p.parent.name}" for p in cluster.glob("*/__init__.py")} - {"cluster.cli"}
    assert core == listed, f"add {sorted(core - listed)} / drop {sorted(listed - core)}"


def test_the_gateway_imports_neither_torch_nor_mlflow():
    """In a fresh interpreter, as a Gateway replica starts: its module and what it pulls in."""
    heavy = ["torch", "mlflow", "onnxruntime", "deepspeed", "sklearn"]
    code = (
        "import sys, json; import serve_apps.gateway, serve_apps.admission; "
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_proxy_callback_the_cluster_sets_is_the_admission_middleware():
    """cluster.local names it as a string (the core must not import serve_apps)."""
    from cluster.local import PROXY_CALLBACK, SERVE_ENV
    from serve_apps import admission

    module, _, attribute = PROXY_CALLBACK.partition(":")
    assert SERVE_ENV["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == PROXY_CALLBACK
    assert module == admission.__name__ and getattr(admission, attribute) is admission.middlewares
