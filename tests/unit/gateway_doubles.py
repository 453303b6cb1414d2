"""In-process stand-ins for what a Gateway replica talks to in other processes (Predictor
and Generator replicas, the release controller, the rate limiter actor), for the gateway's
unit tests over ASGI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from pydantic import ValidationError
from ray.exceptions import RayTaskError

from actors.rate_limiter import RateLimiter
from actors.release.routing import Outcome, Route
from models.exceptions import ModelNotFound
from models.signature import CLASSIFY, LM
from serve_apps._private.model_ids import parse_model_id
from serve_apps._private.prediction import Prediction
from serve_apps.schemas import GenerateRequest, GeneratorConfig

WIDTH = 4
ROW = [1.0] * WIDTH
SIGNATURES = {
    ("digits", 3): {"signature": {"input_shape": [WIDTH], "num_classes": 10}, "task": CLASSIFY},
    ("digits", 4): {"signature": {"input_shape": [WIDTH], "num_classes": 10}, "task": CLASSIFY},
    ("gpt", 1): {"signature": {"input_shape": [8], "num_classes": 256}, "task": LM},
    ("digits", 5): {  # an ensemble (jobs.ensemble)
        "signature": {"input_shape": [WIDTH], "num_classes": 10},
        "task": CLASSIFY,
        "members": ["digits@3", "digits@4"],
    },
}


class Releases:
    """The release controller as a gateway replica's ReleaseClient sees it."""

    def __init__(self) -> None:
        self.table = {"digits": Route(champion=3), "gpt": Route(champion=1)}
        self.outcomes: list[Outcome] = []

    async def routes(self) -> dict[str, Route]:
        return self.table

    def reconfigure(self, routes_ttl_s: float, flush_s: float, timeout_s: float) -> None:
        self.timings = (routes_ttl_s, flush_s, timeout_s)

    async def signature(self, model: str, version: int) -> dict:
        if (model, version) not in SIGNATURES:
            raise ModelNotFound(f"{model} has no version {version}", model=model)
        return SIGNATURES[model, version]

    async def feedback(self, model: str, request_id: str, labels: list[int]) -> dict:
        answered = [o for o in self.outcomes if o.request_id == request_id and o.ok]
        if not answered:
            raise KeyError(request_id)
        return {o.version: float(np.mean(np.equal(o.predictions, labels))) for o in answered}

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


class Predictor:
    """Predicts class ``version`` for every instance; versions in ``failing`` fail."""

    def __init__(self) -> None:
        self.failing: set[int] = set()
        self.asked: list[int] = []

    def options(self, multiplexed_model_id: str):
        _, version = parse_model_id(multiplexed_model_id)
        return SimpleNamespace(predict=SimpleNamespace(remote=lambda x: self._predict(version, x)))

    async def _predict(self, version: int, inputs: np.ndarray) -> Prediction:
        self.asked.append(version)
        if version in self.failing:
            raise RayTaskError("predict", "traceback", RuntimeError("replica failed"))
        assert inputs.dtype == np.float32 and inputs.shape[1:] == (WIDTH,)
        probabilities = np.full((len(inputs), 10), 0.01, dtype=np.float32)
        probabilities[:, version] = 0.91
        return Prediction(version, probabilities)


class Stream:
    """A streamed generation, like a DeploymentResponseGenerator: ``pieces``, then
    ``error`` (raised in the replica: Ray wraps it) if one is given."""

    def __init__(self, pieces: list[str], error: Exception | None = None) -> None:
        self.pieces, self.error, self.cancelled = list(pieces), error, False

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        if self.pieces:
            return self.pieces.pop(0)
        if self.error is not None:
            raise RayTaskError("generate", "traceback", self.error).as_instanceof_cause()
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled = True


class Generator:
    """Validates like the Generator replica (with its limits), then streams ``pieces``
    (and fails with ``error`` after them, if set)."""

    def __init__(self) -> None:
        self.pieces, self.error, self.streams = ["Hel", "lo"], None, []
        self.asked: list[tuple] = []  # the arguments of each generation

    def options(self, stream: bool, multiplexed_model_id: str):
        assert stream
        return SimpleNamespace(generate=SimpleNamespace(remote=self._generate))

    def _generate(self, prompt, max_new_tokens, temperature, top_k, seed, top_p=None) -> Stream:
        self.asked.append((prompt, max_new_tokens, temperature, top_k, seed, top_p))
        body = {"prompt": prompt, "max_new_tokens": max_new_tokens}
        try:
            GenerateRequest.model_validate(body, context={"limits": GeneratorConfig()})
            stream = Stream(self.pieces, self.error)
        except ValidationError as err:
            stream = Stream([], err)
        self.streams.append(stream)
        return stream


class LimiterHandle:
    """The RateLimiter actor, called in-process (``handle.lease.remote(...)``)."""

    def __init__(self) -> None:
        self.limiter = RateLimiter()
        self.lease = SimpleNamespace(remote=self._lease)

    async def _lease(self, *args) -> object:
        return self.limiter.lease(*args)


def ignore(*_args) -> None:
    return None


def post(client, path: str, body, key: str | None, **headers):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json", **headers}
    if key:
        headers["X-API-Key"] = key
    return client.post(path, content=content, headers=headers)


class ServeStatus:
    """What ``serve.status()`` says of the application's Predictor deployments:
    ``running[name]`` RUNNING replicas each."""

    def __init__(self, running: dict[str, int]) -> None:
        self.running = running

    def __call__(self):
        deployments = {
            name: SimpleNamespace(replica_states={"RUNNING": n}) for name, n in self.running.items()
        }
        return SimpleNamespace(applications={"models": SimpleNamespace(deployments=deployments)})


def as_replica(monkeypatch, gateway, status: ServeStatus) -> None:
    """Make ``gateway`` the replica Serve injects as the routes' ``self``, with ``status`` as
    ``serve.status()``; Ray metrics (they need a Ray worker) are not recorded."""
    from ray import serve

    from serve_apps._private import middleware

    context = SimpleNamespace(servable_object=gateway, app_name="models")
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    monkeypatch.setattr(serve, "status", status)
    monkeypatch.setattr(middleware, "gateway_metrics", lambda: SimpleNamespace(observe=ignore))
