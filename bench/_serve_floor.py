"""Ray Serve's floor: the plain-FastAPI baseline's handler inside one Serve replica.

``bench.serve_overhead --floor`` deploys this as a second application (``floor``, route
prefix ``/floor``) beside the model API and measures it as a third side. It is the best any
design built on a Serve ingress can reach on this machine: the same process-local handler
as the baseline (key check, pydantic validation, one ONNX Runtime call), with nothing of
ours around it, so ``floor_ratio`` (its req/s over plain FastAPI's) is what Serve's own
path (proxy or HAProxy, replica wrapper, metrics) leaves of the baseline's throughput.

The ASGI app is built in the replica (``__serve_build_asgi_app__``): it holds an ONNX
Runtime session, which cannot travel through the controller.
"""

from __future__ import annotations

from pathlib import Path

from ray import serve

from bench._serve_load import baseline_app

APP_NAME = "floor"
ROUTE_PREFIX = "/floor"


@serve.deployment(name="Floor", num_replicas=1, max_ongoing_requests=64)
@serve.ingress()
class Floor:
    def __init__(self, baseline: dict) -> None:
        self._baseline = baseline

    def __serve_build_asgi_app__(self):
        b = self._baseline
        return baseline_app(
            Path(b["onnx"]),
            b["keys_uri"],
            b["model"],
            int(b["version"]),
            [int(n) for n in b["input_shape"]],
            int(b["threads"]),
        )


def app(args: dict):
    """Serve's application builder: ``args`` are ``baseline_app``'s arguments by name."""
    return Floor.bind(args)


def application(served) -> dict:
    """This app's entry for a Serve config, serving ``served`` (a ``_serve_load.Served``)."""
    return {
        "name": APP_NAME,
        "route_prefix": ROUTE_PREFIX,
        "import_path": f"{__name__}:app",
        "args": {
            "onnx": str(served.onnx),
            "keys_uri": served.keys_uri,
            "model": served.model,
            "version": served.version,
            "input_shape": list(served.input_shape),
            "threads": served.threads,
        },
    }
