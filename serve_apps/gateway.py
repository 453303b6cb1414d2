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
import logging
import time

import numpy as np
import ray
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayError
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from actors.rate_limiter import LIMITER_NAME, Lease, LeasedQuota, Quota, RateLimiter
from cluster.settings import get_settings
from models.exceptions import InvalidModelRef, ModelNotFound
from models.registry import CHAMPION, check_name
from serve_apps._private.http import (
    ApiError,
    error_response,
    read_json_body,
    request_id,
    validation_message,
)
from serve_apps.keys import AuthError, KeyRecord, KeyStore, keys_uri, presented_key
from serve_apps.schemas import (
    ErrorResponse,
    GatewayConfig,
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


@api.middleware("http")
async def _request_ids(request: Request, call_next):
    # Serve's proxy gives every request an X-Request-ID (the client's, or a new one) and
    # echoes it on the response; errors quote the same id in their body.
    rid = request_id(request)
    request.state.request_id = rid
    try:
        return await call_next(request)
    except Exception:  # last line of defence: no traceback ever reaches the client
        logger.exception("unhandled error in request %s", rid)
        return error_response(ApiError(500, "internal", "Internal error."), rid)


@api.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return error_response(err, getattr(request.state, "request_id", None))


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return error_response(
        ApiError(err.status_code, code, str(err.detail)), request.state.request_id
    )


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    detail = validation_message(ValidationError.from_exception_data("request", err.errors()))
    return error_response(ApiError(422, "invalid_input", detail), request.state.request_id)


def _limiter_actor() -> ray.actor.ActorHandle:
    """The one RateLimiter of the Serve namespace, created by whichever replica asks first.

    Defined above Gateway: Serve pickles the ingress class by value where it is decorated,
    with only the module globals that exist by then.
    """
    return (
        ray.remote(RateLimiter)
        .options(
            name=LIMITER_NAME,
            namespace=SERVE_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,  # restarted with full buckets: at most one extra burst
        )
        .remote()
    )


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(self, predictor: DeploymentHandle) -> None:
        self.predictor = predictor
        self.keys = KeyStore(keys_uri(get_settings().storage_root))
        self.config = GatewayConfig()
        self.quotas = LeasedQuota(self._lease, self.config.rate_lease_s)
        self._limiter: ray.actor.ActorHandle | None = None
        self._catalog: dict[str, dict] = {}
        self._catalog_at = float("-inf")

    def reconfigure(self, user_config: dict) -> None:
        self.config = GatewayConfig(**user_config)
        self.quotas.lease_s = self.config.rate_lease_s

    async def _authenticate(self, authorization: str | None, x_api_key: str | None) -> None:
        try:
            record = self.keys.authenticate(
                presented_key(authorization, x_api_key), scope="predict"
            )
        except AuthError as err:
            headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
            code = "unauthorized" if err.status == 401 else "forbidden"
            raise ApiError(err.status, code, str(err), headers) from None
        await self._check_quota(record)

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

    async def _models(self) -> dict[str, dict]:
        if time.monotonic() - self._catalog_at > self.config.catalog_ttl_s:
            self._catalog = await self.predictor.catalog.remote()
            self._catalog_at = time.monotonic()
        return self._catalog

    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models", response_model=ModelList, responses=ERRORS, tags=["models"])
    async def list_models(
        self,
        authorization: str | None = Header(None),
        x_api_key: str | None = Header(None),
    ) -> ModelList:
        await self._authenticate(authorization, x_api_key)
        return ModelList(
            models=[
                ModelInfo(
                    name=name,
                    version=m["version"],
                    alias=CHAMPION,
                    input_shape=m["signature"]["input_shape"],
                    num_classes=m["signature"]["num_classes"],
                )
                for name, m in (await self._models()).items()
            ]
        )

    @api.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        tags=["models"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(
        self,
        name: str,
        request: Request,
        authorization: str | None = Header(None),
        x_api_key: str | None = Header(None),
    ) -> PredictResponse:
        await self._authenticate(authorization, x_api_key)
        model = await self._signature_of(name)
        body = await read_json_body(request, self.config.max_body_bytes)
        try:
            parsed = PredictRequest.model_validate(body)
        except ValidationError as err:
            raise ApiError(422, "invalid_input", validation_message(err)) from None
        inputs = self._to_array(name, parsed, model["signature"]["input_shape"])
        try:
            result = await asyncio.wait_for(
                self.predictor.predict.remote((name, inputs)), self.config.upstream_timeout_s
            )
        except TimeoutError:
            raise ApiError(504, "upstream_timeout", "The model did not answer in time.") from None
        except BackPressureError:
            raise ApiError(
                503, "overloaded", "Too many requests in flight.", {"Retry-After": "1"}
            ) from None
        except ModelNotFound as err:
            raise ApiError(503, "model_unavailable", str(err), {"Retry-After": "5"}) from None
        return PredictResponse(
            model=name,
            version=result.version,
            predictions=result.probabilities.argmax(axis=1).tolist(),
            probabilities=result.probabilities.astype(np.float64).round(6).tolist(),
        )

    async def _signature_of(self, name: str) -> dict:
        try:
            check_name(name, "model name")
        except InvalidModelRef as err:
            raise ApiError(422, "invalid_model_name", str(err)) from None
        model = (await self._models()).get(name)
        if model is None:
            raise ApiError(404, "model_not_found", f"No model {name!r} is being served.")
        return model

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
