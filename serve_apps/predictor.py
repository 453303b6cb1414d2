"""The Predictor deployment: ONNX Runtime sessions for each served model's ``champion``.

Concurrent requests are batched with ``@serve.batch`` into one ONNX Runtime call per model.
A watcher thread re-reads the ``champion`` alias every ``refresh_interval_s`` and swaps in a
new version when the alias moves, so promoting a version needs no redeploy.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from ray import serve

from cluster import storage
from cluster.settings import get_settings
from models import package
from models.evaluation import softmax
from models.exceptions import ModelNotFound
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session
from models.registry import CHAMPION, ModelRef, Registry
from models.zoo import Signature
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
        self.models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.refresh()
        self._watcher = threading.Thread(target=self._watch, name="champion-watcher", daemon=True)
        self._watcher.start()

    def reconfigure(self, user_config: dict) -> None:
        self.config = PredictorConfig(**user_config)
        self.predict.set_max_batch_size(self.config.max_batch_size)
        self.predict.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self.refresh()

    def refresh(self) -> None:
        """Load the current champion of every served model whose alias has moved."""
        with self._lock:
            models = dict(self.models)
            for name in self.config.models:
                try:
                    info = self.registry.resolve(ModelRef(name, alias=CHAMPION))
                except ModelNotFound:
                    continue  # nothing promoted yet: requests get 503 until there is
                if name in models and models[name].version == info.version:
                    continue
                folder = self.registry.fetch(info)
                models[name] = LoadedModel(
                    name=name,
                    version=info.version,
                    session=cpu_session(folder / package.ONNX_FILE, self.config.intra_op_threads),
                    signature=package.PackageConfig.read(folder).signature,
                )
                logger.info("serving %s version %d", name, info.version)
            self.models = models  # one reference swap: requests see old or new, never half

    def _watch(self) -> None:
        while not self._stop.wait(self.config.refresh_interval_s):
            try:
                self.refresh()
            except Exception:  # a registry hiccup must not kill the watcher
                logger.exception("refreshing champions failed; keeping the loaded versions")

    def check_health(self) -> None:
        if not self._watcher.is_alive():
            raise RuntimeError("champion watcher thread died")

    def catalog(self) -> dict[str, dict]:
        """What serves now: version and signature per model."""
        return {
            name: {"version": m.version, "signature": m.signature.to_dict()}
            for name, m in self.models.items()
        }

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def predict(self, requests: list[tuple[str, np.ndarray]]) -> list[Prediction]:
        """One ONNX Runtime call per model over all requests batched together."""
        results: list[Prediction | None] = [None] * len(requests)
        models = self.models
        for name in {name for name, _ in requests}:
            model = models.get(name)
            if model is None:
                raise ModelNotFound(f"Model {name!r} has no champion to serve yet.", model=name)
            idx = [i for i, (n, _) in enumerate(requests) if n == name]
            inputs = np.concatenate([requests[i][1] for i in idx])
            proba = softmax(model.session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0])
            splits = np.cumsum([len(requests[i][1]) for i in idx])[:-1]
            for i, part in zip(idx, np.split(proba, splits), strict=True):
                results[i] = Prediction(model.version, part)
        return results

    def __del__(self) -> None:
        self._stop.set()
