"""The model API application: Gateway (FastAPI ingress) -> Predictor (ONNX Runtime) for
classifiers, Generator (torch, streamed) for language models.

    serve run serve_apps.models_api:app                     # one-off, in the foreground
    serve deploy serve_apps/serve_config.yaml --address http://127.0.0.1:8265

Replicas, resources and tunables live in serve_config.yaml, not here.
"""

from serve_apps.gateway import Gateway
from serve_apps.generator import Generator
from serve_apps.predictor import Predictor

app = Gateway.bind(Predictor.bind(), Generator.bind())
