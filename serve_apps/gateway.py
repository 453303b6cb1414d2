"""The Gateway deployment: the FastAPI ingress in front of every model.

It admits callers (API keys and scopes, each key's quota over all replicas: a dependency
of every model route), caps and parses bodies, checks each instance against the served
model's signature, and forwards to the Predictor (or streams from the Generator) as the
model's release routing decides. Every failure is a 4xx/5xx with a short JSON message:
bad input never reaches the model and never yields a 500.

This module is the transport; each protocol lives in ``serve_apps._private``: ``access``
(keys, quotas), ``http`` (errors, the body reader and its parser limits), ``bodies``
(schemas to model inputs), ``routing`` (which version answers: a pure function),
``datacenters`` (where a request is served: origin first, spillover, residency),
``answers`` (calling versions; outcomes and agreement), ``oip`` (the Open Inference
Protocol's tensors and metadata), ``upstream`` (upstream failures as
HTTP errors), ``sse`` (server-sent events), ``middleware`` (request ids, metrics, error
answers).

The routes stay in this one module, past the project's ~400 lines: Serve's ingress makes
them methods of the one ``Gateway`` class (its replica is their ``self``); what they do
lives in those ``_private`` modules.
"""

# No `from __future__ import annotations` here: FastAPI must see real annotations on the
# Serve ingress methods, or it mistakes `request: Request` for a query parameter.
import asyncio
from collections.abc import Callable
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.release.client import ReleaseClient
from actors.release.routing import Route
from cluster.settings import get_settings
from cluster.topology import REGION_LABEL
from models.exceptions import ModelNotFound
from models.refs import CHAMPION
from models.signature import LM
from serve_apps._private import oip, openai_api, sse
from serve_apps._private.access import QuotaGate, authenticate
from serve_apps._private.answers import SINGLE, Answers
from serve_apps._private.bodies import checked_name, prediction_response, read_model, to_array
from serve_apps._private.datacenters import (
    ORIGIN_HEADER,
    DatacenterHealth,
    Datacenters,
    predictor_name,
    read_replicas,
    watch_replicas,
)
from serve_apps._private.http import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    ApiError,
    read_body,
    read_json_body,
    safe_header,
)
from serve_apps._private.middleware import Observed, add_error_handlers
from serve_apps._private.model_ids import model_id
from serve_apps._private.prediction import Prediction
from serve_apps._private.response_cache import ResponseCache
from serve_apps._private.routing import plan
from serve_apps._private.upstream import feedback_error
from serve_apps.keys import KeyRecord, KeyStore, keys_uri
from serve_apps.schemas import (
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    GatewayConfig,
    GenerateRequest,
    ModelInfo,
    ModelList,
    OipErrorResponse,
    OpenAIErrorResponse,
    OpenAIModel,
    PredictRequest,
    PredictResponse,
)

api = FastAPI(
    title="aimass",
    description="Models served by aimass. Model routes need an API key: "
    "`Authorization: Bearer <key>` or `X-API-Key: <key>`.",
    version="0.1.0",
)
_STATUSES = (400, 401, 403, 404, 413, 415, 422, 429, 503, 504)
ERRORS = {s: {"model": ErrorResponse} for s in _STATUSES}
OIP_ERRORS = {s: {"model": OipErrorResponse} for s in _STATUSES}
OPENAI_ERRORS = {s: {"model": OpenAIErrorResponse} for s in _STATUSES if s != 422}
OIP, OPENAI = "open inference protocol", "openai"  # the routes' OpenAPI tags


def body_schema(model: type) -> dict:
    """OpenAPI for a body the route reads by hand (to cap its size before parsing it)."""
    schema = {"schema": model.model_json_schema()}
    return {"requestBody": {"required": True, "content": {"application/json": schema}}}


PREDICT_BODY = body_schema(PredictRequest)

api.add_middleware(Observed)
add_error_handlers(api)

# Everything the Gateway's methods use is defined above the class: Serve pickles the
# ingress app by value where it is decorated, with only the module globals that exist then.


async def admitted(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="`Bearer <API key>` (or send `X-API-Key`).")
    ] = None,
    x_api_key: Annotated[str | None, Header(description="The API key.")] = None,
) -> KeyRecord:
    """The dependency of every model route: the caller's key record (valid, unrevoked,
    with the ``predict`` scope, within its quota), or 401/403/429/503."""
    # The replica serving this request: what Serve injects as the routes' `self`.
    gateway = serve.get_replica_context().servable_object
    record = authenticate(gateway.keys, authorization, x_api_key)
    request.state.key = record.id  # on the request's metrics, 429s included
    await gateway.quota.check(record)
    return record


Caller = Annotated[KeyRecord, Depends(admitted)]
_RETRY = {"Retry-After": "1"}
ADMITTED = [Depends(admitted)]
OIP_MODEL_ROUTE = {"responses": OIP_ERRORS, "tags": [OIP], "dependencies": ADMITTED}


def openai_route(body: type) -> dict:
    """The OpenAPI of an OpenAI route: its body, JSON or a stream of events, a key."""
    streamed = {200: {"content": {"text/event-stream": {}}}}
    extra = {"openapi_extra": body_schema(body), "dependencies": ADMITTED}
    return {"responses": OPENAI_ERRORS | streamed, "tags": [OPENAI], **extra}


def _own_region() -> str | None:
    """The datacenter (Ray region label) of the node this replica runs on."""
    import ray

    return ray.get_runtime_context().get_node_labels().get(REGION_LABEL)


@serve.deployment
@serve.ingress(api)
class Gateway:
    """The ingress. ``predictors``: the Predictor deployment, or one per datacenter
    (``{region: handle}``, see ``serve_apps.models_api``)."""

    def __init__(
        self,
        predictors: DeploymentHandle | dict[str, DeploymentHandle],
        generator: DeploymentHandle,
        own_region: Callable[[], str | None] = _own_region,
    ) -> None:
        self.generator = generator
        self.config = c = GatewayConfig()
        self.keys = KeyStore(keys_uri(get_settings().storage_root))
        self.quota = QuotaGate(c.rate_lease_s, c.rate_limiter_timeout_s)
        self.releases = ReleaseClient(c.catalog_ttl_s, c.outcomes_flush_s, c.controller_timeout_s)
        by_dc = predictors if isinstance(predictors, dict) else {None: predictors}
        self.datacenters = (
            Datacenters(tuple(by_dc), c.datacenters, own_region())
            if isinstance(predictors, dict)
            else None
        )
        health = self.datacenters.health if self.datacenters else DatacenterHealth()
        self.answers = Answers(by_dc, self.releases, c.upstream_timeout_s, health)
        # Predictor deployments by datacenter (None: the one Predictor), watched for replicas.
        self._deployments = {dc: predictor_name(dc) if dc else "Predictor" for dc in by_dc}
        self._watch: asyncio.Task | None = None
        self.cache = ResponseCache(c.response_cache)

    def reconfigure(self, user_config: dict) -> None:
        self.config = c = GatewayConfig(**user_config)
        self.quota.reconfigure(c.rate_lease_s, c.rate_limiter_timeout_s)
        self.answers.timeout_s = c.upstream_timeout_s
        self.answers.attempt_timeout_s = c.datacenters.attempt_timeout_s
        self.releases.reconfigure(c.catalog_ttl_s, c.outcomes_flush_s, c.controller_timeout_s)
        self.cache.reconfigure(c.response_cache)
        if self.datacenters is not None:
            self.datacenters.reconfigure(c.datacenters)  # names unknown datacenters: refused

    def _watching(self) -> DatacenterHealth:
        """The replicas-per-datacenter view, its poll started on the replica's own loop."""
        if self._watch is None or self._watch.done():
            app = serve.get_replica_context().app_name
            period = lambda: self.config.datacenters.health_poll_s  # noqa: E731 (live value)
            watch = watch_replicas(
                self.answers.health, app, self._deployments, serve.status, period
            )
            self._watch = asyncio.ensure_future(watch)
        return self.answers.health

    def _order(self, request: Request, caller: KeyRecord) -> tuple[str | None, ...]:
        """Where this request may be served, nearest first (one place without datacenters)."""
        self._watching()
        if self.datacenters is None:
            return SINGLE
        origin, order = self.datacenters.order(request.headers.get(ORIGIN_HEADER), caller)
        request.state.origin = origin  # with the answering region: the spillover metric
        return order

    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def readyz(self, model: str | None = None) -> dict:
        """Ready to answer (``model``, or any model): it is served and Predictor replicas
        run here. What a load balancer in front of clusters checks (no key needed)."""
        return await self._ready(model)

    # ---- the Open Inference Protocol (v2): serve_apps._private.oip ----------------------

    @api.get("/v2", tags=[OIP])
    async def oip_server(self) -> dict:
        return {"name": "aimass", "version": api.version, "extensions": oip.EXTENSIONS}

    @api.get("/v2/health/live", tags=[OIP])
    async def oip_live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready", tags=[OIP], responses={503: OIP_ERRORS[503]})
    async def oip_ready(self) -> dict:
        await self._ready(None)
        return {"ready": True}

    @api.get("/v2/models/{name}", **OIP_MODEL_ROUTE)
    async def oip_model(self, name: str) -> dict:
        """The model's inputs and outputs; ``versions``: those answering unpinned calls."""
        route = await self._route(name)
        info = await self._classifier(name, route.champion)
        served = [route.champion, *([route.candidate] if route.candidate else [])]
        return oip.model_metadata(name, served, info["signature"])

    @api.get("/v2/models/{name}/versions/{version}", **OIP_MODEL_ROUTE)
    async def oip_model_version(self, name: str, version: str) -> dict:
        v = oip.parse_version(version)
        info = await self._classifier(checked_name(name), v)
        return oip.model_metadata(name, [v], info["signature"])

    @api.get("/v2/models/{name}/ready", **OIP_MODEL_ROUTE)
    async def oip_model_ready(self, name: str) -> dict:
        await self._classifier(name, (await self._route(name)).champion)
        await self._ready(name)
        return {"name": name, "ready": True}

    @api.get("/v2/models/{name}/versions/{version}/ready", **OIP_MODEL_ROUTE)
    async def oip_model_version_ready(self, name: str, version: str) -> dict:
        await self._classifier(checked_name(name), oip.parse_version(version))
        await self._ready(None)  # any registered version loads where Predictors run
        return {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer", responses=OIP_ERRORS, tags=[OIP])
    async def oip_infer(self, name: str, request: Request, caller: Caller) -> Response:
        """Infer with the version the model's release routing sends this caller to, as
        ``POST /v1/models/{name}/predict`` does; JSON or binary tensors."""
        route = await self._route(name)
        req, inputs = await self._oip_inputs(name, route.champion, request, None)
        result = await self._answer(name, route, inputs, request, caller)
        return oip.infer_response(name, result, req, request.state.request_id)

    @api.post("/v2/models/{name}/versions/{version}/infer", responses=OIP_ERRORS, tags=[OIP])
    async def oip_infer_version(
        self, name: str, version: str, request: Request, caller: Caller
    ) -> Response:
        v = oip.parse_version(version)
        req, inputs = await self._oip_inputs(checked_name(name), v, request, v)
        result = await self.answers.call(name, v, inputs, self._order(request, caller))
        request.state.version, request.state.region = v, result.region
        return oip.infer_response(name, result, req, request.state.request_id)

    # ---- readiness ----------------------------------------------------------------------

    async def _ready(self, model: str | None) -> dict:
        health = self._watching()
        if health.running is None:  # a replica's first probe: read now, not after a poll
            app = serve.get_replica_context().app_name
            await read_replicas(health, app, self._deployments, serve.status)
        running = health.running
        routes = await self.releases.routes()
        if model is not None and checked_name(model) not in routes:
            raise ApiError(503, "not_ready", f"{model!r} is not served here.", _RETRY)
        if not routes:
            raise ApiError(503, "not_ready", "No model is served here yet.", _RETRY)
        if not running or not any(running.values()):
            raise ApiError(503, "not_ready", "No Predictor replica runs yet.", _RETRY)
        replicas = {dc or "any": n for dc, n in running.items()}
        return {"status": "ready", "models": sorted(routes), "replicas": replicas}

    @api.get(
        "/v1/models",
        response_model=ModelList,
        responses=ERRORS,
        tags=["models"],
        dependencies=ADMITTED,
    )
    async def list_models(self) -> ModelList:
        models = []
        for name, route in sorted((await self.releases.routes()).items()):
            info = await self.releases.signature(name, route.champion)
            models.append(
                ModelInfo(
                    name=name,
                    version=route.champion,
                    alias=CHAMPION,
                    input_shape=info["signature"]["input_shape"],
                    num_classes=info["signature"]["num_classes"],
                )
            )
        return ModelList(models=models, data=[OpenAIModel(id=m.name) for m in models])

    @api.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,  # `members` only for ensembles
        responses=ERRORS,
        tags=["models"],
        openapi_extra=PREDICT_BODY,
    )
    async def predict(self, name: str, request: Request, caller: Caller) -> PredictResponse:
        """Score instances with the model's champion, or its release candidate for the
        callers a running release sends there; the answer names the version (and, in
        ``X-Served-Region``, the datacenter that answered)."""
        route = await self._route(name)
        inputs = await self._inputs(name, route.champion, request)
        result = await self._answer(name, route, inputs, request, caller)
        members = (await self._signature(name, result.version)).get("members")
        return prediction_response(name, result, request.state.request_id, members)

    @api.post(
        "/v1/models/{name}/versions/{version}/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,  # `members` only for ensembles
        responses=ERRORS,
        tags=["models"],
        openapi_extra=PREDICT_BODY,
    )
    async def predict_version(
        self, name: str, version: int, request: Request, caller: Caller
    ) -> PredictResponse:
        """Score instances with one registered version, whatever its aliases."""
        checked_name(name)
        if not 1 <= version < 2**31:
            raise ApiError(422, "invalid_version", "Versions are whole numbers from 1.")
        inputs = await self._inputs(name, version, request)
        result = await self.answers.call(name, version, inputs, self._order(request, caller))
        request.state.version, request.state.region = version, result.region
        members = (await self._signature(name, version)).get("members")
        return prediction_response(name, result, request.state.request_id, members)

    @api.post(
        "/v1/models/{name}/feedback",
        response_model=FeedbackResponse,
        responses=ERRORS,
        tags=["models"],
        openapi_extra=body_schema(FeedbackRequest),
        dependencies=ADMITTED,
    )
    async def feedback(self, name: str, request: Request) -> FeedbackResponse:
        """The true labels of an earlier prediction (its request id): they become each
        answering version's online accuracy, which releases are judged on."""
        checked_name(name)
        raw = await read_json_body(request, self.config.max_body_bytes)
        body = read_model(raw, FeedbackRequest)
        try:
            scored = await self.releases.feedback(name, body.request_id, body.labels)
        except Exception as err:
            raise feedback_error(err, name) from None
        return FeedbackResponse(request_id=body.request_id, accuracy=scored)

    @api.post(
        "/v1/models/{name}/generate",
        responses=ERRORS | {200: {"content": {"text/event-stream": {}}}},
        tags=["models"],
        openapi_extra=body_schema(GenerateRequest),
        dependencies=ADMITTED,
    )
    async def generate(self, name: str, request: Request) -> StreamingResponse:
        """Continue a prompt with the language model's champion, streamed as server-sent
        events: ``data: {"text": ...}`` per piece, then ``event: done`` with the version and
        the number of pieces. Closing the connection stops the generation."""
        version = (await self._route(name)).champion
        request.state.model, request.state.version = name, version
        await self._language_model(name, version)
        raw = await read_json_body(request, self.config.max_body_bytes)
        body = read_model(raw, GenerateRequest)  # the schema; the Generator checks its limits
        handle = self.generator.options(stream=True, multiplexed_model_id=model_id(name, version))
        stream = handle.generate.remote(
            body.prompt, body.max_new_tokens, body.temperature, body.top_k, body.seed, body.top_p
        )
        return await sse.stream_response(
            stream, version, request.state.request_id, self.config.upstream_timeout_s
        )

    # ---- the OpenAI API for language models: serve_apps._private.openai_api ------------

    @api.post(COMPLETIONS, **openai_route(openai_api.CompletionRequest))
    async def completions(self, request: Request) -> Response:
        """OpenAI's completions: ``prompt`` continued by ``model`` (``gpt`` or ``gpt:3``)."""
        raw = await read_json_body(request, self.config.max_body_bytes)
        return await self._openai(request, read_model(raw, openai_api.CompletionRequest))

    @api.post(CHAT_COMPLETIONS, **openai_route(openai_api.ChatRequest))
    async def chat_completions(self, request: Request) -> Response:
        """OpenAI's chat completions: the model continues the chat as ``assistant``."""
        raw = await read_json_body(request, self.config.max_body_bytes)
        return await self._openai(request, read_model(raw, openai_api.ChatRequest))

    async def _openai(self, request: Request, body) -> Response:
        name, _, pinned = body.model.partition(":")
        version = oip.parse_version(pinned) if pinned else (await self._route(name)).champion
        request.state.model, request.state.version = checked_name(name), version
        info = await self._language_model(name, version)
        handle = self.generator.options(stream=True, multiplexed_model_id=model_id(name, version))
        temperature, top_k, top_p = openai_api.sampling(body)

        async def start(prompt: str, tokens: int, seed: int | None) -> openai_api.Started:
            stream = handle.generate.remote(prompt, tokens, temperature, top_k, seed, top_p)
            return openai_api.Started(stream, await sse.first_piece(stream))

        choices = await openai_api.started(body, start, self.config.upstream_timeout_s)
        rid = request.state.request_id
        context = info["signature"]["input_shape"][0]
        return await openai_api.answer(body, choices, f"{name}:{version}", rid, context)

    # ---- the request path ---------------------------------------------------------------

    async def _route(self, name: str) -> Route:
        route = (await self.releases.routes()).get(checked_name(name))
        if route is None:
            raise ApiError(404, "model_not_found", f"No model {name!r} is being served.")
        return route

    async def _signature(self, name: str, version: int) -> dict:
        try:
            return await self.releases.signature(name, version)
        except ModelNotFound:
            raise ApiError(
                404, "model_not_found", f"Model {name!r} has no version {version}."
            ) from None

    async def _answer(
        self, name: str, route: Route, inputs: np.ndarray, request: Request, caller: KeyRecord
    ) -> Prediction:
        """The answer the model's release routing gives this caller: from the response
        cache when the model has one and holds it, else from the models."""
        # Sticky per end user when the application names one, else per API key.
        how = plan(route, safe_header(request, "X-User-ID") or caller.id)
        entry = self.cache.key(name, how, caller.id, inputs)
        result = self.cache.get(name, entry) if entry else None
        if entry:
            request.state.cache = "hit" if result else "miss"  # on the metrics
        if result is None:
            rid, order = request.state.request_id, self._order(request, caller)
            result = await self.answers.answer(name, how, inputs, rid, order)
            if entry:
                self.cache.put(name, entry, result)
        request.state.version, request.state.region = result.version, result.region
        return result

    async def _classifier(self, name: str, version: int) -> dict:
        """A classifier version's signature and task, or 404 / 422 for a language model."""
        info = await self._signature(name, version)
        if info["task"] == LM:
            raise ApiError(
                422,
                "wrong_route",
                f"{name!r} is a language model: POST /v1/models/{name}/generate instead.",
            )
        return info

    async def _language_model(self, name: str, version: int) -> dict:
        """A language-model version's signature and task, or 404 / 422 for a classifier."""
        info = await self._signature(name, version)
        if info["task"] != LM:
            raise ApiError(
                422,
                "wrong_route",
                f"{name!r} is not a language model: POST /v1/models/{name}/predict instead.",
            )
        return info

    async def _oip_inputs(
        self, name: str, version: int, request: Request, pinned: int | None
    ) -> tuple[oip.InferRequest, np.ndarray]:
        request.state.model = name  # validated by now: a bounded metrics tag
        info = await self._classifier(name, version)
        raw = await read_body(request, self.config.max_body_bytes)
        shape = info["signature"]["input_shape"]
        req, inputs = oip.read_infer(
            bytes(raw), request.headers.get(oip.INFER_HEADER), shape, self.config.max_instances
        )
        oip.check_names(req, name, pinned)
        return req, inputs

    async def _inputs(self, name: str, version: int, request: Request) -> np.ndarray:
        """The request's instances as the version's input array, or a 4xx naming why not."""
        request.state.model = name  # validated by now: a bounded metrics tag
        info = await self._classifier(name, version)
        raw = await read_json_body(request, self.config.max_body_bytes)
        body = read_model(raw, PredictRequest)
        shape = info["signature"]["input_shape"]
        return to_array(body, name, shape, self.config.max_instances)
