"""The Generator deployment: streams text from GPT versions in the registry, token by token.

A request names the version it wants as Serve's multiplexed model id, ``name:version``
(header ``serve_multiplexed_model_id`` over HTTP, ``multiplexed_model_id`` on a handle).
Serve routes it to a replica that has that version loaded when there is one, and each
replica keeps its ``max_models_per_replica`` most recently used versions. Ids name version
numbers, not aliases: a cached id must mean the same weights for as long as it is cached.

    handle = generator.options(stream=True, multiplexed_model_id="shakespeare:3")
    async for piece in handle.generate.remote("To be", 64, 0.8, 40, None):
        ...

Streams on a replica share forwards (continuous batching): each loaded version has one
decode loop (``_private.decode_batch``) that, while it has streams, steps them all together:
one forward runs the last token of every stream against its KV cache, then streams that
arrived meanwhile are prefilled (one forward each) and decode with the others from the next
step; a stream that reached its ``max_new_tokens`` or was cancelled leaves. All forwards, of
every version, run on one dedicated thread, so the event loop stays free to send what is
ready. A cancelled stream (the HTTP client went away) stops at its next token: the step
already running finishes, its token is dropped, none follows. Each stream samples with its
own ``torch.Generator``: a seeded request gives the same text alone or batched with others.
``kv_cache: false`` in the user_config recomputes the whole context for every token (the
baseline ``bench.generation`` measures the cache against).

``pipeline: {num_stages: 2, ...}`` in the user_config serves each version through pipeline-
stage actors (``actors.pipeline.StagedGPT``) instead of a GPT in the replica: the same decode
loop, its forwards sent through the stages, each stage keeping the KV caches of its layers.
A stage that dies restarts its group; the streams then running are prefilled again and go
on. The group stops when its version has left the multiplexer's cache and its last stream
ended, or when the replica stops (stage actors are owned by the replica: they die with it).
A changed ``pipeline`` setting applies to a loaded version at its next request (it is
loaded again; streams already running finish on the old one).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import tempfile
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from ray import serve

from actors.pipeline import PipelineConfig, StagedGPT, owner_namespace
from cluster.settings import get_settings
from models import package
from models.exceptions import IncompatibleModel
from models.gpt import GPT, encode
from models.registry import Registry
from models.signature import LM
from models.weights import load_weights
from models.zoo import architecture, build_model
from serve_apps._private.decode_batch import DecodeLoop, Forward, Row
from serve_apps._private.model_ids import parse_model_id
from serve_apps.schemas import GENERATION_LIMITS, GenerateRequest, GeneratorConfig

logger = logging.getLogger("ray.serve")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, weakref_slot=True)
class LoadedLM:
    """A GPT version ready to sample from."""

    name: str
    version: int
    model: GPT | StagedGPT
    decoder: DecodeLoop
    """Batches the decode steps of this version's streams."""
    pipeline: PipelineConfig | None = None
    """The ``pipeline`` setting it was loaded with (None: a GPT in this process)."""

    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.version}"


class _Cached:
    """What the multiplexer caches for a version: its current ``LoadedLM``, replaced when the
    ``pipeline`` setting changes (Serve's multiplexer takes no other way to reload an id)."""

    def __init__(self, lm: LoadedLM) -> None:
        self.lm, self.lock = lm, asyncio.Lock()


def load_lm(folder: Path, name: str, version: int, forward: Forward) -> LoadedLM:
    """Build the GPT a (verified) package describes and load its safetensors weights; its
    decode loop runs its forwards through ``forward`` (on the forward thread)."""
    config = package.PackageConfig.read(folder)
    if architecture(config.architecture).task != LM:
        raise IncompatibleModel(
            f"{name}:{version} is a {config.architecture!r} model, not a language model: "
            "generate from a version of a 'gpt' model.",
            model=name,
            version=str(version),
            architecture=config.architecture,
        )
    model = build_model(config.architecture, **config.options)
    load_weights(model, folder / package.WEIGHTS_FILE)
    model.eval()
    return LoadedLM(name, version, model, DecodeLoop(model, forward))


def load_staged(
    registry: Registry,
    name: str,
    version: int,
    pipeline: PipelineConfig,
    owner: str,
    forward: Forward,
) -> LoadedLM:
    """A version served by a started ``StagedGPT`` whose stages are named in ``owner``'s
    namespace; its group stops once the returned ``LoadedLM`` is gone (evicted from the
    multiplexer and no stream left)."""
    # Each replica (owner) names its groups in a namespace of its own: stage names say model,
    # version and stage only, and two replicas serving one version would otherwise take the
    # same names (the second would wait for the first's to be freed, then fail).
    placed = pipeline.model_copy(update={"namespace": owner_namespace(pipeline.namespace, owner)})
    staged = StagedGPT.from_registry(registry, name, version, placed)
    lm = LoadedLM(name, version, staged, DecodeLoop(staged, forward), pipeline)
    weakref.finalize(lm, staged.shutdown)
    return lm


@serve.deployment
class Generator:
    """Streams text from GPT versions of the registry.

    Args:
        registry: Where versions come from; by default the one the cluster settings name.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        # One thread for every forward: the versions' decode loops take turns per step, and
        # torch's own intra-op threads (config.threads) parallelise within each forward.
        self._forwards = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator-forward")
        if registry is None:
            settings = get_settings()
            registry = Registry.from_settings(settings)
        self.registry = registry
        self.config = GeneratorConfig()
        self._multiplexed: Callable[[str], Awaitable[_Cached]] | None = None
        self._owner = ""  # this replica's id, for its stage groups' namespace (on first use)
        # Versions alive in this process: cached by the multiplexer or still streaming.
        self._loaded: weakref.WeakValueDictionary[str, LoadedLM] = weakref.WeakValueDictionary()

    def reconfigure(self, user_config: dict) -> None:
        config = GeneratorConfig(**user_config)
        kept = self.config.max_models_per_replica
        if self._multiplexed is not None and config.max_models_per_replica != kept:
            # Serve's multiplexer takes its size once; a new one would strand the old cache.
            logger.warning(
                "max_models_per_replica %d applies to replicas started from now on; this one "
                "keeps %d",
                config.max_models_per_replica,
                kept,
            )
            config = config.model_copy(update={"max_models_per_replica": kept})
        self.config = config

    async def check_health(self) -> None:
        """Healthy while the forward thread takes work: a stuck forward stalls every stream."""
        await asyncio.get_running_loop().run_in_executor(self._forwards, lambda: None)

    def loaded(self) -> list[str]:
        """The model ids (``name:version``) this replica holds in memory now."""
        return sorted(self._loaded)

    async def generate(
        self,
        prompt: str,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        seed: int | None,
        top_p: float | None = None,
    ) -> AsyncIterator[str]:
        """Stream the continuation of ``prompt`` from the version the request's model id names.

        Yields a piece of text each time a token completes one or more characters (tokens are
        bytes); an incomplete character left at the end comes last, as U+FFFD.

        Raises:
            pydantic.ValidationError: An argument is out of range or over this server's limits.
            InvalidModelRef: The multiplexed model id is not ``name:version``.
            ModelNotFound: No such version in the registry.
            IncompatibleModel: The version is not a language model.
        """
        request = GenerateRequest.model_validate(
            {
                "prompt": prompt,
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_k": top_k,
                "seed": seed,
                "top_p": top_p,
            },
            context={GENERATION_LIMITS: self.config},
        )
        lm = await self._model()
        rng = torch.Generator()
        if request.seed is None:
            rng.seed()
        else:
            rng.manual_seed(request.seed)
        row = Row(
            context=encode(request.prompt)[-lm.model.cfg.block_size :],
            remaining=request.max_new_tokens,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            rng=rng,
            use_cache=self.config.kv_cache,
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stream = lm.decoder.submit(row)
        produced = 0
        try:
            async for token in stream:
                produced += 1
                if piece := decoder.decode(bytes([token])):
                    yield piece
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            logger.info("generation from %s cancelled after %d tokens", lm.model_id, produced)
            raise
        if tail := decoder.decode(b"", final=True):
            yield tail

    async def _on_forward_thread(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the forward thread, with this replica's torch threads, no autograd."""

        def run() -> _T:
            # torch's thread count (OpenMP) and inference mode are per thread.
            if torch.get_num_threads() != self.config.threads:
                torch.set_num_threads(self.config.threads)
            with torch.inference_mode():
                return fn()

        return await asyncio.get_running_loop().run_in_executor(self._forwards, run)

    async def _model(self) -> LoadedLM:
        model_id = serve.get_multiplexed_model_id()
        parse_model_id(model_id)  # a malformed id fails here, before Serve's multiplexer
        if self._multiplexed is None:

            async def load(model_id: str) -> LoadedLM:  # a function: Serve's wrapper needs one
                return await self._load(model_id)

            self._multiplexed = serve.multiplexed(
                max_num_models_per_replica=self.config.max_models_per_replica
            )(load)
        cached = await self._multiplexed(model_id)
        if cached.lm.pipeline != self.config.pipeline:
            async with cached.lock:  # one reload, however many requests wait for it
                if cached.lm.pipeline != self.config.pipeline:
                    cached.lm = await self._build(model_id)
        return cached.lm

    async def _load(self, model_id: str) -> _Cached:
        return _Cached(await self._build(model_id))

    async def _build(self, model_id: str) -> LoadedLM:
        name, version = parse_model_id(model_id)
        lm = await asyncio.to_thread(self._fetch_and_build, name, version, self.config.pipeline)
        self._loaded[model_id] = lm
        how = f"over {lm.pipeline.num_stages} pipeline stages" if lm.pipeline else "in-process"
        logger.info("loaded %s %s (%s)", model_id, how, lm.model.cfg)
        return lm

    def _fetch_and_build(
        self, name: str, version: int, pipeline: PipelineConfig | None
    ) -> LoadedLM:
        if pipeline is not None:
            owner, forward = self._replica_id(), self._on_forward_thread
            return load_staged(self.registry, name, version, pipeline, owner, forward)
        info = self.registry.get(name, version)
        # The weights end up in memory: the downloaded package is not needed after.
        with tempfile.TemporaryDirectory(prefix=f"aimass-{name}-v{version}-") as tmp:
            folder = self.registry.fetch(info, Path(tmp))
            return load_lm(folder, name, version, self._on_forward_thread)

    def _replica_id(self) -> str:
        if not self._owner:
            try:
                self._owner = serve.get_replica_context().replica_id.unique_id
            except Exception:  # outside a Serve replica (tests, a driver): any unique id
                self._owner = uuid.uuid4().hex[:8]
        return self._owner

    def __del__(self) -> None:
        self._forwards.shutdown(wait=False, cancel_futures=True)
        for lm in list(self._loaded.values()):  # the replica stops: so do its stage groups
            if isinstance(lm.model, StagedGPT):
                lm.model.shutdown()
