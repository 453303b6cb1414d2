"""The model API application: Gateway (FastAPI ingress) -> Predictor (ONNX Runtime) for
classifiers, Generator (torch, streamed) for language models.

    serve run serve_apps.models_api:app                     # one-off, in the foreground
    serve deploy serve_apps/serve_config.yaml --address http://127.0.0.1:8265

With ``args: {datacenters: [us-east, eu-west]}`` (serve_apps/serve_config.datacenters.yaml)
there is one Predictor deployment per datacenter, ``Predictor-<region>``, placed on that
region's nodes (``label_selector``) and scaled on its own demand; the gateway serves each
request in its origin datacenter first (``serve_apps._private.datacenters``). Without it, one
Predictor, anywhere.

Replicas, resources, placement and tunables live in the YAML, not here. (No `from __future__
import annotations`: Serve reads the builder's real annotation to validate `args` with it.)
"""

from ray.serve import Application

from cluster.topology import REGION_LABEL
from serve_apps._private.datacenters import predictor_name
from serve_apps.gateway import Gateway
from serve_apps.generator import Generator
from serve_apps.predictor import Predictor
from serve_apps.schemas import ModelsApiArgs


def build(args: ModelsApiArgs) -> Application:
    """The application for ``args`` (Serve calls it with the config's ``args``).

    It does not ask whether each datacenter has nodes now: an autoscaling cluster (KubeRay,
    the launcher) adds a region's nodes when its replicas are pending, and KubeRay deploys
    as soon as the head is ready. ``aimass deploy`` refuses a datacenter without nodes
    before deploying (``cluster.cli.placement_check``), for clusters of fixed nodes.
    """
    if not args.datacenters:
        return Gateway.bind(Predictor.bind(), Generator.bind())
    predictors = {
        dc: Predictor.options(
            name=predictor_name(dc), ray_actor_options={"label_selector": {REGION_LABEL: dc}}
        ).bind()
        for dc in args.datacenters
    }
    return Gateway.bind(predictors, Generator.bind())


app = build
