"""The HTTP contract: request and response bodies, and the settings read from YAML.

These models are the OpenAPI schema users see at /docs, and the only way a request body
becomes data: anything they do not accept is answered with a 4xx naming the problem.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from actors.pipeline import PipelineConfig
from cluster.topology import Datacenter

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class PredictRequest(BaseModel):
    """A batch of instances, each a flat list of numbers in the model's input order."""

    model_config = ConfigDict(extra="forbid")

    instances: list[list[FiniteFloat]] = Field(
        min_length=1,
        description="Instances to score, e.g. 64 pixel counts (0-16) per digit image.",
        examples=[[[0.0] * 64]],
    )


class PredictResponse(BaseModel):
    model: str = Field(description="Registered model name.")
    version: int = Field(description="The model version that answered.")
    predictions: list[int] = Field(description="Predicted class per instance.")
    probabilities: list[list[float]] = Field(description="Class probabilities per instance.")
    request_id: str | None = Field(None, description="Quote it when sending labels back.")
    members: list[str] | None = Field(
        None, description="An ensemble's member versions (name@version), all of which answered."
    )


class FeedbackRequest(BaseModel):
    """The true labels of an earlier request's instances, in the same order."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(
        pattern=r"^[A-Za-z0-9._:-]{1,128}$", description="The X-Request-ID of the prediction."
    )
    labels: list[Annotated[int, Field(strict=True, ge=0)]] = Field(min_length=1, max_length=4096)


class FeedbackResponse(BaseModel):
    request_id: str
    accuracy: dict[int, float] = Field(
        description="Per version that answered the request: share of labels it got right."
    )


class ModelInfo(BaseModel):
    name: str
    version: int
    alias: str
    input_shape: list[int]
    num_classes: int


class OpenAIModel(BaseModel):
    """A served model as OpenAI's model list shows it (``id``: what ``model`` names)."""

    id: str
    object: Literal["model"] = "model"
    owned_by: str = "aimass"


class ModelList(BaseModel):
    """The served models: ``models`` (ours), and ``object`` / ``data`` in OpenAI's list
    shape, so ``client.models.list()`` of OpenAI's client reads the same answer."""

    models: list[ModelInfo]
    object: Literal["list"] = "list"
    data: list[OpenAIModel] = []


class ErrorResponse(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. 'invalid_input'.")
    detail: str = Field(description="What was wrong, and how to fix it.")
    request_id: str | None = None


class OipErrorResponse(BaseModel):
    """An error on the Open Inference Protocol's routes (``/v2``), in its shape."""

    error: str = Field(description="What was wrong, and how to fix it.")


class OpenAIError(BaseModel):
    message: str
    type: str = Field(description="e.g. 'invalid_request_error', 'authentication_error'.")
    param: str | None = None
    code: str | None = Field(None, description="Our machine-readable code.")


class OpenAIErrorResponse(BaseModel):
    """An error on the OpenAI API's routes, in OpenAI's shape."""

    error: OpenAIError


class DatacenterPolicy(BaseModel):
    """How the gateway spreads requests over datacenters (``user_config.datacenters``).

    The datacenters themselves are the application's (``args.datacenters``: one Predictor
    deployment each); this says how far apart they are, which tenants are restricted to
    which, and when a datacenter counts as failing.
    """

    model_config = ConfigDict(extra="forbid")

    rtt_ms: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = Field(
        default_factory=dict,
        description="Round trips between datacenters, ms (either direction); pairs not given "
        "take cluster.topology's defaults for common regions, else count as the farthest.",
    )
    tenants: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Residency per tenant: the datacenters its keys' requests may be served "
        "in (a key's own restriction narrows it further).",
    )
    eject_after_failures: int = Field(
        2, ge=1, description="Failed answers in a row that take a datacenter out of rotation."
    )
    eject_for_s: float = Field(
        10.0, gt=0, description="How long an ejected datacenter stays out (then one try)."
    )
    attempt_timeout_s: float = Field(
        2.0,
        gt=0,
        description="How long one datacenter may take before the next one is asked (the last "
        "one gets upstream_timeout_s).",
    )
    health_poll_s: float = Field(
        1.0, gt=0, description="How often each replica reads replicas per datacenter."
    )


class CachePolicy(BaseModel):
    """How a model's answers are cached in each gateway replica (``response_cache``)."""

    model_config = ConfigDict(extra="forbid")

    max_entries: int = Field(1024, ge=1, le=1_000_000, description="Answers kept (LRU).")
    per_key: bool = Field(
        True,
        description="Answers cached for one API key serve that key only, so tenants never "
        "share them; false shares them between keys (a public model).",
    )


class GatewayConfig(BaseModel):
    """Gateway tunables (``user_config`` of the Gateway deployment in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(1 << 20, ge=1024, description="Request body cap (413 above).")
    max_instances: int = Field(256, ge=1, description="Instances per request (422 above).")
    upstream_timeout_s: float = Field(10.0, gt=0, description="Predictor timeout (504 after).")
    catalog_ttl_s: float = Field(
        1.0, ge=0, description="How long the routing table (versions, releases) is cached."
    )
    outcomes_flush_s: float = Field(
        0.5, gt=0, description="How often answer outcomes go to the release controller."
    )
    controller_timeout_s: float = Field(
        1.0, gt=0, description="How long a call to the release controller may take."
    )
    rate_lease_s: float = Field(
        0.1,
        gt=0,
        le=10,
        description="Seconds of a key's quota a replica leases at once from the global rate "
        "limiter; each replica may admit at most this much over the quota.",
    )
    rate_limiter_timeout_s: float = Field(
        1.0, gt=0, description="How long a lease may take before the request gets 503."
    )
    datacenters: DatacenterPolicy = Field(
        default_factory=DatacenterPolicy,
        description="Spreading over datacenters, when the application has several.",
    )
    response_cache: dict[str, CachePolicy] = Field(
        default_factory=dict,
        description="Models whose answers each replica caches, by name (none by default).",
    )


class PredictorConfig(BaseModel):
    """Predictor tunables (``user_config`` of the Predictor deployment), changeable live."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, le=1024, description="Requests per ONNX Runtime call.")
    batch_wait_timeout_s: float = Field(
        0.002, ge=0, le=1, description="How long a batch waits to fill."
    )
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads (0 = ORT default).")
    max_consecutive_failures: int = Field(
        5,
        ge=1,
        description="Failed ONNX Runtime runs in a row after which the replica "
        "reports itself unhealthy (Serve replaces it).",
    )


GENERATION_LIMITS = "limits"
"""Validation context key: the GeneratorConfig a GenerateRequest must fit (the Generator
replica validates with its own limits; the gateway checks the schema alone)."""


class GeneratorConfig(BaseModel):
    """Generator tunables (``user_config`` of the Generator deployment), changeable live."""

    model_config = ConfigDict(extra="forbid")

    max_prompt_chars: int = Field(
        2048, ge=1, le=1_000_000, description="Longest prompt accepted, in characters."
    )
    max_new_tokens: int = Field(
        256, ge=1, le=100_000, description="Most tokens (bytes) one request may ask for."
    )
    threads: int = Field(
        1, ge=1, le=256, description="torch intra-op threads per forward (torch.set_num_threads)."
    )
    max_models_per_replica: int = Field(
        2,
        ge=1,
        le=64,
        description="Model versions a replica keeps loaded (least recently used goes first). "
        "Fixed at a replica's first request: a later change applies to replicas started after it.",
    )
    kv_cache: bool = Field(
        True,
        description="Keep each stream's keys and values (prefill once, then one token per "
        "forward, streams batched). false recomputes the whole context for every token: the "
        "baseline of bench.generation, not for serving.",
    )
    pipeline: PipelineConfig | None = Field(
        None,
        description="Serve each version through pipeline-stage actors instead of in this "
        "replica, e.g. {num_stages: 2, stage_memory_bytes: 200000000}: a StagedGPT whose "
        "stages each hold a slice of the layers and its KV caches. null (the default): the "
        "whole GPT in the replica. A change applies to each loaded version at its next request.",
    )


class GenerateRequest(BaseModel):
    """Text to continue, and how to sample the continuation."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1,
        description="Text to continue. Tokens are UTF-8 bytes; a prompt longer than the "
        "model's block_size bytes is cut to its last block_size bytes.",
        examples=["Once upon a time"],
    )
    max_new_tokens: int = Field(
        64,
        ge=1,
        strict=True,
        description="Tokens to sample: each is one byte, so a character may take up to 4. "
        "At most the server's limit (256 by default).",
    )
    temperature: FiniteFloat = Field(
        1.0,
        gt=0,
        le=5,
        description="Divides the logits: below 1 sharper and more predictable, above 1 flatter.",
    )
    top_k: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="Sample from the k most likely tokens only; null samples from all of them.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        strict=True,
        description="Random seed: the same seed, prompt and model version give the same text. "
        "Null draws a fresh one.",
    )
    top_p: FiniteFloat | None = Field(
        None,
        gt=0,
        le=1,
        description="Nucleus sampling: from the most likely tokens that together make up this "
        "much probability; null (or 1) samples from all of them.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_within_limit(cls, prompt: str, info: ValidationInfo) -> str:
        limits: GeneratorConfig | None = (info.context or {}).get(GENERATION_LIMITS)
        if limits is not None and len(prompt) > limits.max_prompt_chars:
            raise ValueError(
                f"{len(prompt)} characters; this server takes at most "
                f"{limits.max_prompt_chars}: send the end of your text only"
            )
        return prompt

    @field_validator("max_new_tokens")
    @classmethod
    def _tokens_within_limit(cls, tokens: int, info: ValidationInfo) -> int:
        limits: GeneratorConfig | None = (info.context or {}).get(GENERATION_LIMITS)
        if limits is not None and tokens > limits.max_new_tokens:
            raise ValueError(
                f"{tokens} asked; this server samples at most {limits.max_new_tokens} per "
                "request: ask for fewer and continue from the text you got"
            )
        return tokens


class ModelsApiArgs(BaseModel):
    """The model API application's arguments (``args`` in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    datacenters: list[str] = Field(
        default_factory=list,
        description="One Predictor deployment per datacenter (Ray region), named "
        "Predictor-<region> and placed there; empty: one Predictor, anywhere.",
    )

    @field_validator("datacenters")
    @classmethod
    def _label_safe(cls, names: list[str]) -> list[str]:
        for i, name in enumerate(names):
            try:
                Datacenter(region=name, zone=f"{name}-a")
            except ValueError as err:
                raise ValueError(f"datacenters[{i}]: {err}") from None
        if len(set(names)) != len(names):
            raise ValueError(f"datacenters {names}: each datacenter once")
        return names
