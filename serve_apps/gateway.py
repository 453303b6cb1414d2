"""The Gateway deployment: the FastAPI ingress in front of every model.

It authenticates (API keys and their scopes), enforces each key's quota across all
replicas (leasing tokens from the global rate limiter actor), caps and validates bodies,
checks each instance against the served model's signature, forwards to the Predictor and
maps every failure to a 4xx/5xx with a short JSON message. Bad input never reaches the
model and never yields a 500.

If the rate limiter cannot be reached, keys with a quota fail closed: 503 with
``Retry-After`` (keys without a quota never call it). The actor is detached and restarted
by Ray; the next lease looks it up (or creates it) again.
"""

# No `from __future__ import annotations` here: FastAPI must see real annotations on the
# Serve ingress methods, or it mistakes `request: Request` for a query parameter.
import asyncio
import json
import logging
import time

import numpy as np
import ray
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from actors import serve_singleton
from actors.exceptions import ActorUnavailable
from actors.rate_limiter import LIMITER_NAME, Lease, LeasedQuota, Quota, RateLimiter
from actors.release.client import ReleaseClient
from actors.release.routing import Mode, Outcome, Route
from cluster.settings import get_settings
from models.exceptions import IncompatibleModel, InvalidModelRef, ModelNotFound
from models.refs import CHAMPION, check_name
from models.signature import LM
from serve_apps._private.http import (
    ApiError,
    error_response,
    read_json_body,
    request_id,
    safe_header,
    validation_message,
)
from serve_apps._private.metrics import gateway_metrics
from serve_apps._private.model_ids import model_id
from serve_apps._private.prediction import Prediction
from serve_apps.keys import AuthError, KeyRecord, KeyStore, keys_uri, presented_key
from serve_apps.schemas import (
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    GatewayConfig,
    GenerateRequest,
    ModelInfo,
    ModelList,
    PredictRequest,
    PredictResponse,
)

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="aimass",
    description="Models served by aimass. Model routes need an API key: "
    "`Authorization: Bearer <key>` or `X-API-Key: <key>`.",
    version="0.1.0",
)
ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 415, 422, 429, 503, 504)}


def body_schema(model: type) -> dict:
    """OpenAPI for a body the route reads by hand (to cap its size before parsing it)."""
    schema = {"schema": model.model_json_schema()}
    return {"requestBody": {"required": True, "content": {"application/json": schema}}}


PREDICT_BODY = body_schema(PredictRequest)


class _Observed:
    """Request ids, the last line of defence and metrics, as plain ASGI middleware.

    Serve's proxy gives every request an X-Request-ID (the client's, or a new one) and
    echoes it on the response; errors quote the same id in their body. (Starlette's
    ``@app.middleware("http")`` did this at a quarter of the gateway's CPU per request.)
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)  # its state is the scope's: handlers see the same
        rid = request.state.request_id = request_id(request)
        start, status = time.perf_counter(), [500, 0.0]

        async def observed_send(message) -> None:
            if message["type"] == "http.response.start":
                status[:] = message["status"], time.perf_counter() - start
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:  # no traceback ever reaches the client
            logger.exception("unhandled error in request %s", rid)
            request.state.error = "internal"
            if not status[1]:  # nothing sent yet: answer with a clean 500
                response = error_response(ApiError(500, "internal", "Internal error."), rid)
                await response(scope, receive, observed_send)
        if scope["path"].startswith("/v1/"):
            gateway_metrics().observe(request, status[0], status[1])


api.add_middleware(_Observed)


@api.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    request.state.error = err.code
    return error_response(err, getattr(request.state, "request_id", None))


@api.exception_handler(ActorUnavailable)
async def _actor_unavailable(request: Request, err: ActorUnavailable) -> JSONResponse:
    logger.warning("%s", err)
    request.state.error = "routing_unavailable"
    unavailable = ApiError(503, "routing_unavailable", "Try again shortly.", {"Retry-After": "1"})
    return error_response(unavailable, getattr(request.state, "request_id", None))


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    request.state.error = code
    return error_response(
        ApiError(err.status_code, code, str(err.detail)), request.state.request_id
    )


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    detail = validation_message(ValidationError.from_exception_data("request", err.errors()))
    request.state.error = "invalid_input"
    return error_response(ApiError(422, "invalid_input", detail), request.state.request_id)


def _limiter_actor() -> ray.actor.ActorHandle:
    """The one RateLimiter of the Serve namespace, created by whichever replica asks first.

    Defined above Gateway: Serve pickles the ingress class by value where it is decorated,
    with only the module globals that exist by then.
    """
    # Restarted with full buckets if it dies: at most one extra burst.
    return serve_singleton(RateLimiter, LIMITER_NAME)


def _agree(a: Prediction, b: Prediction) -> bool:
    """Whether two versions predicted the same class for every instance."""
    return bool((a.probabilities.argmax(axis=1) == b.probabilities.argmax(axis=1)).all())


def _generation_error(err: BaseException) -> ApiError:
    """The 4xx/5xx for a generation that failed before its first piece."""
    # Ray re-raises a replica's exception as RayTaskError; it cannot always also subclass
    # the original type (pydantic's ValidationError), so look at the cause itself.
    err = getattr(err, "cause", None) or err
    if isinstance(err, TimeoutError):
        return ApiError(504, "upstream_timeout", "The model did not start answering in time.")
    if isinstance(err, ValidationError):
        return ApiError(422, "invalid_input", validation_message(err))
    if isinstance(err, (InvalidModelRef, IncompatibleModel)):
        return ApiError(422, "invalid_model", str(err))
    if isinstance(err, ModelNotFound):
        return ApiError(404, "model_not_found", str(err))
    if isinstance(err, BackPressureError):
        return ApiError(503, "overloaded", "Too many requests in flight.", {"Retry-After": "1"})
    logger.warning("generation failed to start: %r", err)
    return ApiError(503, "model_unavailable", "The model failed to answer.", {"Retry-After": "1"})


async def _events(stream, first: str | None, version: int, rid: str):
    """Server-sent events of a started generation; cancels it when the client goes away."""
    pieces = 0
    try:
        if first is not None:
            pieces += 1
            yield f"data: {json.dumps({'text': first})}\n\n"
        async for piece in stream:
            pieces += 1
            yield f"data: {json.dumps({'text': piece})}\n\n"
        done = {"version": version, "pieces": pieces, "request_id": rid}
        yield f"event: done\ndata: {json.dumps(done)}\n\n"
    except Exception as err:  # after the 200: report it in the stream, never a traceback
        logger.warning("generation %s failed after %d pieces: %r", rid, pieces, err)
        failed = {"error": "generation_failed", "request_id": rid}
        yield f"event: error\ndata: {json.dumps(failed)}\n\n"
    finally:
        stream.cancel()  # a no-op when finished; stops the replica when the client left


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(self, predictor: DeploymentHandle, generator: DeploymentHandle) -> None:
        self.predictor, self.generator = predictor, generator
        self.keys = KeyStore(keys_uri(get_settings().storage_root))
        self.config = GatewayConfig()
        self.quotas = LeasedQuota(self._lease, self.config.rate_lease_s)
        self._limiter: ray.actor.ActorHandle | None = None
        self.releases = self._release_client()
        self._background: set[asyncio.Task] = set()  # shadow calls, referenced until done
        self._handles: dict[str, DeploymentHandle] = {}

    def _release_client(self) -> ReleaseClient:
        c = self.config
        return ReleaseClient(c.catalog_ttl_s, c.outcomes_flush_s, c.controller_timeout_s)

    def reconfigure(self, user_config: dict) -> None:
        self.config = GatewayConfig(**user_config)
        self.quotas.lease_s = self.config.rate_lease_s
        self.releases = self._release_client()

    async def _authenticate(
        self, request: Request, authorization: str | None, x_api_key: str | None
    ) -> KeyRecord:
        """The caller's key record (its id goes on the request's metrics), or 401/403/429."""
        try:
            record = self.keys.authenticate(
                presented_key(authorization, x_api_key), scope="predict"
            )
        except AuthError as err:
            headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
            code = "unauthorized" if err.status == 401 else "forbidden"
            raise ApiError(err.status, code, str(err), headers) from None
        request.state.key = record.id
        await self._check_quota(record)
        return record

    async def _check_quota(self, record: KeyRecord) -> None:
        if record.quota is None:
            return
        try:
            decision = await self.quotas.acquire(record.id, record.quota)
        except (RayError, TimeoutError) as err:  # fail closed, but never with a 500
            logger.warning("rate limiter unreachable (%s): refusing quota keys", err)
            self._limiter = None  # look it up (or create it) again on the next lease
            raise ApiError(
                503, "rate_limiter_unavailable", "Try again shortly.", {"Retry-After": "1"}
            ) from None
        if not decision.admitted:
            raise ApiError(
                429,
                "rate_limited",
                f"Over this key's quota of {record.quota.rate:g} requests/s "
                f"(burst {record.quota.burst}); retry after {decision.retry_after} s.",
                {"Retry-After": decision.retry_after},
            )

    async def _lease(self, key_id: str, quota: Quota, want: int) -> Lease:
        if self._limiter is None:  # a GCS lookup: off the event loop
            self._limiter = await asyncio.to_thread(_limiter_actor)
        return await asyncio.wait_for(
            self._limiter.lease.remote(key_id, quota.rate, quota.burst, want),
            self.config.rate_limiter_timeout_s,
        )

    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models", response_model=ModelList, responses=ERRORS, tags=["models"])
    async def list_models(
        self,
        request: Request,
        authorization: str | None = Header(None),
        x_api_key: str | None = Header(None),
    ) -> ModelList:
        await self._authenticate(request, authorization, x_api_key)
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
        return ModelList(models=models)

    @api.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        tags=["models"],
        openapi_extra=PREDICT_BODY,
    )
    async def predict(
        self,
        name: str,
        request: Request,
        authorization: str | None = Header(None),
        x_api_key: str | None = Header(None),
    ) -> PredictResponse:
        """Score instances with the model's champion, or its release candidate for the
        callers a running release sends there; the answer names the version."""
        record = await self._authenticate(request, authorization, x_api_key)
        route = await self._route(name)
        inputs = await self._inputs(name, route.champion, request)
        caller = safe_header(request, "X-User-ID") or record.id
        answer = await self._answer(name, route, inputs, caller, request.state.request_id)
        request.state.version = answer.version
        return answer

    @api.post(
        "/v1/models/{name}/versions/{version}/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        tags=["models"],
        openapi_extra=PREDICT_BODY,
    )
    async def predict_version(
        self,
        name: str,
        version: int,
        request: Request,
        authorization: str | None = Header(None),
        x_api_key: str | None = Header(None),
    ) -> PredictResponse:
        """Score instances with one registered version, whatever its aliases."""
        await self._authenticate(request, authorization, x_api_key)
        self._check_name(name)
        if not 1 <= version < 2**31:
            raise ApiError(422, "invalid_version", "Versions are whole numbers from 1.")
        inputs = await self._inputs(name, version, request)
        result = await self._call(name, version, inputs)
        request.state.version = version
        return self._response(name, result, request.state.request_id)

    @api.post(
        "/v1/models/{name}/feedback",
        response_model=FeedbackResponse,
        responses=ERRORS,
        tags=["models"],
        openapi_extra=body_schema(FeedbackRequest),
    )
    async def feedback(
        self,
        name: str,
        request: Request,
        authorization: str | None = Header(None),
        x_api_key: str | None = Header(None),
    ) -> FeedbackResponse:
        """The true labels of an earlier prediction (its request id): they become each
        answering version's online accuracy, which releases are judged on."""
        await self._authenticate(request, authorization, x_api_key)
        self._check_name(name)
        raw = await read_json_body(request, self.config.max_body_bytes)
        try:
            body = FeedbackRequest.model_validate(raw)
        except ValidationError as err:
            raise ApiError(422, "invalid_input", validation_message(err)) from None
        try:
            scored = await self.releases.feedback(name, body.request_id, body.labels)
        except KeyError:
            raise ApiError(
                404, "unknown_request", f"No recent prediction of {name!r} has that request id."
            ) from None
        except ValueError as err:
            raise ApiError(422, "invalid_input", str(err)) from None
        except (RayError, TimeoutError):
            raise ApiError(
                503, "feedback_unavailable", "Try again.", {"Retry-After": "1"}
            ) from None
        return FeedbackResponse(request_id=body.request_id, accuracy=scored)

    @api.post(
        "/v1/models/{name}/generate",
        responses=ERRORS | {200: {"content": {"text/event-stream": {}}}},
        tags=["models"],
        openapi_extra=body_schema(GenerateRequest),
    )
    async def generate(
        self,
        name: str,
        request: Request,
        authorization: str | None = Header(None),
        x_api_key: str | None = Header(None),
    ) -> StreamingResponse:
        """Continue a prompt with the language model's champion, streamed as server-sent
        events: ``data: {"text": ...}`` per piece, then ``event: done`` with the version and
        the number of pieces. Closing the connection stops the generation."""
        await self._authenticate(request, authorization, x_api_key)
        version = (await self._route(name)).champion
        request.state.model, request.state.version = name, version
        try:
            info = await self.releases.signature(name, version)
        except ModelNotFound:
            raise ApiError(404, "model_not_found", f"No model {name!r} is being served.") from None
        if info["task"] != LM:
            raise ApiError(
                422, "wrong_route", f"{name!r} is not a language model: POST .../predict instead."
            )
        raw = await read_json_body(request, self.config.max_body_bytes)
        try:  # the schema here; this server's limits are checked by the Generator replica
            body = GenerateRequest.model_validate(raw)
        except ValidationError as err:
            raise ApiError(422, "invalid_input", validation_message(err)) from None
        handle = self.generator.options(stream=True, multiplexed_model_id=model_id(name, version))
        stream = handle.generate.remote(
            body.prompt, body.max_new_tokens, body.temperature, body.top_k, body.seed
        )
        # The first piece decides the status: refusals (limits, model) become a 4xx before
        # any byte of the 200 is sent.
        try:
            first = await asyncio.wait_for(stream.__anext__(), self.config.upstream_timeout_s)
        except StopAsyncIteration:
            first = None
        except BaseException as err:
            stream.cancel()
            raise _generation_error(err) from None
        return StreamingResponse(
            _events(stream, first, version, request.state.request_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Model-Version": str(version)},
        )

    # ---- the request path ---------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        try:
            check_name(name, "model name")
        except InvalidModelRef as err:
            raise ApiError(422, "invalid_model_name", str(err)) from None

    async def _route(self, name: str) -> Route:
        self._check_name(name)
        route = (await self.releases.routes()).get(name)
        if route is None:
            raise ApiError(404, "model_not_found", f"No model {name!r} is being served.")
        return route

    async def _inputs(self, name: str, version: int, request: Request) -> np.ndarray:
        """The request's instances as the version's input array, or a 4xx naming why not."""
        request.state.model = name  # validated by now: a bounded metrics tag
        try:
            info = await self.releases.signature(name, version)
        except ModelNotFound:
            raise ApiError(
                404, "model_not_found", f"Model {name!r} has no version {version}."
            ) from None
        if info["task"] == LM:
            raise ApiError(
                422,
                "wrong_route",
                f"{name!r} is a language model: POST /v1/models/{name}/generate instead.",
            )
        body = await read_json_body(request, self.config.max_body_bytes)
        try:
            parsed = PredictRequest.model_validate(body)
        except ValidationError as err:
            raise ApiError(422, "invalid_input", validation_message(err)) from None
        return self._to_array(name, parsed, info["signature"]["input_shape"])

    async def _answer(
        self, name: str, route: Route, inputs: np.ndarray, caller: str, rid: str
    ) -> PredictResponse:
        """Champion or candidate, as the route says for this caller. A candidate's failure
        is answered by the champion (the client never sees it) and reported to the release
        controller, which rolls the candidate back."""
        champion, candidate = route.champion, route.candidate
        if not route.sends_to_candidate(caller):
            return self._response(name, await self._observed(name, champion, inputs, rid), rid)
        if route.mode is Mode.SHADOW:  # the champion answers; a copy goes to the candidate
            result = await self._observed(name, champion, inputs, rid)
            self._in_background(self._observed(name, candidate, inputs, rid, compare_to=result))
            return self._response(name, result, rid)
        reference = None
        if route.compare:  # the champion's answer too, to measure agreement
            reference = asyncio.ensure_future(self._call(name, champion, inputs))
        try:
            result = await self._observed(name, candidate, inputs, rid, compare_to=reference)
        except ApiError:
            logger.warning(
                "candidate v%d of %s failed request %s: champion answers", candidate, name, rid
            )
            result = await (reference or self._observed(name, champion, inputs, rid))
        return self._response(name, result, rid)

    async def _observed(
        self,
        name: str,
        version: int,
        inputs: np.ndarray,
        rid: str,
        compare_to: Prediction | asyncio.Future | None = None,
    ) -> Prediction:
        """One version's answer, with its outcome reported: ok or not, latency, predictions
        (for feedback) and, given another version's answer, whether they agree."""
        t0 = time.perf_counter()
        try:
            result = await self._call(name, version, inputs)
        except ApiError:
            self.releases.record(Outcome(name, version, False, 0.0, request_id=rid))
            raise
        latency_ms = (time.perf_counter() - t0) * 1e3
        agreed = None
        if compare_to is not None:
            try:
                other = compare_to if isinstance(compare_to, Prediction) else await compare_to
                agreed = _agree(result, other)
            except ApiError:
                pass  # the champion failed this one: nothing to compare against
        predictions = result.probabilities.argmax(axis=1).tolist()
        self.releases.record(Outcome(name, version, True, latency_ms, agreed, rid, predictions))
        return result

    async def _call(self, name: str, version: int, inputs: np.ndarray) -> Prediction:
        mid = model_id(name, version)
        handle = self._handles.get(mid)
        if handle is None:  # one handle per version: options() builds a new one each call
            handle = self._handles[mid] = self.predictor.options(multiplexed_model_id=mid)
        try:
            return await asyncio.wait_for(
                handle.predict.remote(inputs), self.config.upstream_timeout_s
            )
        except TimeoutError:
            raise ApiError(504, "upstream_timeout", "The model did not answer in time.") from None
        except BackPressureError:
            raise ApiError(
                503, "overloaded", "Too many requests in flight.", {"Retry-After": "1"}
            ) from None
        except ModelNotFound as err:
            raise ApiError(404, "model_not_found", str(err)) from None
        except RayError as err:  # the replica failed this request: not the client's fault
            logger.warning("model %s v%d failed: %s", name, version, err)
            raise ApiError(
                503, "model_unavailable", "The model failed to answer.", {"Retry-After": "1"}
            ) from None

    def _in_background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        # Its failure is already reported to the controller; retrieve it so asyncio is quiet.
        task.add_done_callback(
            lambda t: self._background.discard(t) or t.cancelled() or t.exception()
        )

    def _response(self, name: str, result: Prediction, rid: str | None) -> PredictResponse:
        return PredictResponse(
            model=name,
            version=result.version,
            predictions=result.probabilities.argmax(axis=1).tolist(),
            probabilities=result.probabilities.astype(np.float64).round(6).tolist(),
            request_id=rid,
        )

    def _to_array(self, name: str, req: PredictRequest, input_shape: list[int]) -> np.ndarray:
        if len(req.instances) > self.config.max_instances:
            raise ApiError(
                422,
                "invalid_input",
                f"{len(req.instances)} instances; at most {self.config.max_instances} per request.",
            )
        width = int(np.prod(input_shape))
        for i, instance in enumerate(req.instances):
            if len(instance) != width:
                raise ApiError(
                    422,
                    "invalid_input",
                    f"instances[{i}] has {len(instance)} values; model {name!r} expects {width}.",
                )
        return np.asarray(req.instances, dtype=np.float32).reshape(-1, *input_shape)
