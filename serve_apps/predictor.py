"""The Predictor deployment: ONNX Runtime sessions for model versions, multiplexed.

Each request names the version it wants through Serve's multiplexed model id
(``"name:version"``, see ``model_id``): Serve routes it to a replica that has that version
loaded when one has, loads it on first use (``@serve.multiplexed``, least recently used
versions unloaded past ``max_models_per_replica``), and ``@serve.batch`` splits batches by
model id, so every ONNX Runtime call runs one version over all the requests batched
together. Which version a request should get (champion, candidate, pinned) is the
gateway's decision, from the release controller's routing table: replicas hold no aliases.

A replica fails its health check (and Serve replaces it, draining it first) once
``max_consecutive_failures`` ONNX Runtime runs in a row have failed, or once an operator
retired it through a DeploymentHandle (``retire``: behind Ray's token, not on HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import ray
from ray import serve

from cluster.settings import get_settings
from cluster.topology import REGION_LABEL
from models import package
from models.drift import INPUT_PROFILE, InputProfile
from models.evaluation import softmax
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session
from models.registry import Registry
from models.signature import Signature
from serve_apps._private.drift import DriftWatch
from serve_apps._private.metrics import batch_sizes
from serve_apps._private.model_ids import parse_model_id
from serve_apps._private.prediction import Prediction
from serve_apps.schemas import PredictorConfig

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    version: int
    session: ort.InferenceSession
    signature: Signature
    profile: InputProfile | None = None  # the training inputs' (None: recorded before drift)
    loaded_at: float = field(default_factory=time.monotonic)  # when its session was opened


@dataclass(slots=True)
class Health:
    """Whether a replica should be replaced, and why: after ``max_failures_in_a_row``
    failed model runs in a row, or once retired by an operator. Never healthy again after."""

    max_failures_in_a_row: int
    failures_in_a_row: int = 0
    unhealthy: str | None = None

    def ran(self, ok: bool) -> bool:
        """Count a model run; True when this one made the replica unhealthy."""
        self.failures_in_a_row = 0 if ok else self.failures_in_a_row + 1
        if self.failures_in_a_row >= self.max_failures_in_a_row and self.unhealthy is None:
            self.unhealthy = f"{self.failures_in_a_row} ONNX Runtime runs failed in a row"
            return True
        return False

    def retire(self, reason: str) -> None:
        self.unhealthy = f"retired: {reason}"

    def check(self) -> None:
        if self.unhealthy is not None:
            raise RuntimeError(f"replica unhealthy: {self.unhealthy}")


def _replica_id() -> str:
    return serve.get_replica_context().replica_id.unique_id


@serve.deployment
class Predictor:
    def __init__(self) -> None:
        settings = get_settings()
        self.registry = Registry.from_settings(settings)
        self.config = PredictorConfig()
        self.health = Health(self.config.max_consecutive_failures)
        self.drift = DriftWatch()
        # Where this replica runs: on every answer, for X-Served-Region and the metrics.
        self.region = ray.get_runtime_context().get_node_labels().get(REGION_LABEL)

    def reconfigure(self, user_config: dict) -> None:
        self.config = PredictorConfig(**user_config)
        self.health.max_failures_in_a_row = self.config.max_consecutive_failures
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
            config = package.PackageConfig.read(folder)
        profile = config.extra.get(INPUT_PROFILE)
        return LoadedModel(
            name,
            version,
            session,
            config.signature,
            InputProfile.from_dict(profile) if profile else None,
        )

    async def check_health(self) -> None:
        """Serve calls it every ``health_check_period_s``; an answer too slow fails it too."""
        self.health.check()

    def retire(self, reason: str) -> str:
        """Fail this replica's health checks from now on, so that Serve drains and replaces
        it (e.g. one on a suspect host); its id is returned. An operator action."""
        self.health.retire(reason)
        replica = _replica_id()
        logger.warning("replica %s: %s", replica, self.health.unhealthy)
        return replica

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def predict(self, inputs: list[np.ndarray]) -> list[Prediction]:
        """One ONNX Runtime call over every request of the batch (one version: Serve splits
        batches by multiplexed model id)."""
        asked = time.monotonic()
        model = await self.load(serve.get_multiplexed_model_id())
        cold = model.loaded_at >= asked  # this batch waited for the load
        batch_sizes().observe(
            len(inputs), tags={"model": model.name, "version": str(model.version)}
        )
        batch = np.concatenate(inputs)
        try:
            logits = model.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        except Exception:
            if self.health.ran(ok=False):
                logger.error("replica %s: %s", _replica_id(), self.health.unhealthy)
            raise
        self.health.ran(ok=True)
        self.drift.observe(model.name, model.version, model.profile, batch)
        proba = softmax(logits)
        splits = np.cumsum([len(x) for x in inputs])[:-1]
        parts = np.split(proba, splits)
        return [Prediction(model.version, part, self.region, cold) for part in parts]
