"""The Predictor deployment: ONNX Runtime sessions for model versions, multiplexed.

Each request names the version it wants through Serve's multiplexed model id
(``"name:version"``, see ``model_id``): Serve routes it to a replica that has that version
loaded when one has, loads it on first use (``@serve.multiplexed``, least recently used
versions unloaded past ``max_models_per_replica``), and ``@serve.batch`` splits batches by
model id, so every ONNX Runtime call runs one version over all the requests batched
together. Which version a request should get (champion, candidate, pinned) is the
gateway's decision, from the release controller's routing table: replicas hold no aliases.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ray import serve

from cluster import storage
from cluster.settings import get_settings
from models import package
from models.evaluation import softmax
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session
from models.registry import Registry
from models.zoo import Signature
from serve_apps._private.metrics import batch_sizes
from serve_apps._private.model_ids import parse_model_id
from serve_apps.schemas import PredictorConfig

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    version: int
    session: ort.InferenceSession
    signature: Signature


@dataclass(frozen=True, slots=True)
class Prediction:
    version: int
    probabilities: np.ndarray  # (n, num_classes)


@serve.deployment
class Predictor:
    def __init__(self) -> None:
        settings = get_settings()
        self.registry = Registry(settings.mlflow_uri, storage.join(settings.storage_root, "mlflow"))
        self.config = PredictorConfig()

    def reconfigure(self, user_config: dict) -> None:
        self.config = PredictorConfig(**user_config)
        self.predict.set_max_batch_size(self.config.max_batch_size)
        self.predict.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    @serve.multiplexed(max_num_models_per_replica=4)
    async def load(self, multiplexed_id: str) -> LoadedModel:
        """Fetch a version's package (SHA-256 verified) and open its ONNX Runtime session."""
        name, version = parse_model_id(multiplexed_id)
        model = await asyncio.to_thread(self._load, name, version)
        logger.info("loaded %s version %d", name, version)
        return model

    def _load(self, name: str, version: int) -> LoadedModel:
        info = self.registry.get(name, version)  # ModelNotFound for a missing version
        with tempfile.TemporaryDirectory(prefix=f"aimass-{name}-v{version}-") as tmp:
            folder = self.registry.fetch(info, Path(tmp))
            session = cpu_session(folder / package.ONNX_FILE, self.config.intra_op_threads)
            signature = package.PackageConfig.read(folder).signature
        return LoadedModel(name, version, session, signature)

    async def check_health(self) -> None:
        pass  # a replica whose event loop answers is healthy; ORT sessions have no state

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def predict(self, inputs: list[np.ndarray]) -> list[Prediction]:
        """One ONNX Runtime call over every request of the batch (one version: Serve splits
        batches by multiplexed model id)."""
        model = await self.load(serve.get_multiplexed_model_id())
        batch_sizes().observe(
            len(inputs), tags={"model": model.name, "version": str(model.version)}
        )
        batch = np.concatenate(inputs)
        proba = softmax(model.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
        splits = np.cumsum([len(x) for x in inputs])[:-1]
        return [Prediction(model.version, part) for part in np.split(proba, splits)]
