"""``StagedGPT``: a GPT version run over pipeline-stage actors, called the way a GPT is.

The Generator calls ``model(idx)`` (logits, loss) and ``model.next_token(idx, temperature,
top_k, generator)`` on a GPT, with ``model.cfg.block_size``; a ``StagedGPT`` answers the same
calls, so it can stand where a ``GPT`` stands:

    staged = StagedGPT.from_registry(registry, "shakespeare", 3, PipelineConfig(num_stages=2))
    logits, _ = staged(idx)                     # (B, T, vocab); blocks a thread
    logits = await staged.logits_async(idx)     # the same from an event loop
    nxt = staged.next_token(idx, 0.8, 40, rng)  # GPT's own sampling over the staged logits
    staged.shutdown()

A forward whose stage died is retried (``request_attempts``) after the group restarts; callers
only see ``PipelineUnavailable`` once the group could not come back.

Cached decoding has GPT's surface too: ``new_cache(batch)`` gives a ``StagedCache``, a handle
on the caches the stages keep under its key, and ``forward_cached(idx, cache)`` runs T new
tokens of its rows through them; ``select`` and ``cat`` act as ``KVCache``'s do, on the stages.
A handle dropped frees its caches there. A restart loses every cache: a prefill (all lengths 0)
is retried on the new stages, a later step raises ``CacheLost`` and the caller prefills its
rows again (``DecodeBatch`` does).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from actors.exceptions import PipelineUnavailable
from actors.pipeline.config import PipelineConfig
from actors.pipeline.group import StageGroup, StagePlacement
from actors.pipeline.plan import plan_stages
from actors.pipeline.stage import PackageSource
from models import package
from models.exceptions import CacheLost, IncompatibleModel
from models.gpt import GPT
from models.signature import LM
from models.zoo import architecture, build_model

if TYPE_CHECKING:
    from models.registry import Registry


class StagedCache:
    """A handle on the caches the stages of ``group`` keep under ``key``: one row per stream.

    ``lengths`` (B,) mirrors the stages' (positions cached per row), as ``KVCache.lengths``;
    ``generation`` is the group's when the caches were made (None: nothing sent yet).
    """

    def __init__(self, group: StageGroup, lengths: torch.Tensor, generation: int | None = None):
        self.group, self.lengths = group, lengths
        self.key = uuid.uuid4().hex
        self._sent = {"generation": generation}  # shared with the finalizer, which must not
        # hold the handle: the stages keep a cache until its handle is dropped (or drop it).
        weakref.finalize(self, _free, group, self.key, self._sent)

    @property
    def generation(self) -> int | None:
        return self._sent["generation"]

    @generation.setter
    def generation(self, value: int) -> None:
        self._sent["generation"] = value

    @property
    def batch(self) -> int:
        return len(self.lengths)

    def select(self, rows: Sequence[int]) -> StagedCache:
        """A cache of these rows only, in this order (as ``KVCache.select``)."""
        out = StagedCache(self.group, self.lengths[list(rows)].clone(), self.generation)
        if self.generation is not None:
            self.group.cache_op(self.generation, "cache_select", out.key, self.key, list(rows))
        return out

    @classmethod
    def cat(cls, caches: Sequence[StagedCache]) -> StagedCache:
        """The rows of ``caches``, one after another (as ``KVCache.cat``); caches of an older
        generation than the others make one that is lost (its next step raises CacheLost)."""
        generations = {c.generation for c in caches}
        generation = generations.pop() if len(generations) == 1 else -1
        out = cls(caches[0].group, torch.cat([c.lengths for c in caches]), generation)
        if generation is not None and generation >= 0:
            out.group.cache_op(generation, "cache_cat", out.key, [c.key for c in caches])
        return out


def _free(group: StageGroup, key: str, sent: dict) -> None:
    if sent["generation"] is not None:
        group.cache_op(sent["generation"], "cache_free", [key])


class StagedGPT:
    """A GPT whose layers run in the stage actors of ``group``.

    Args:
        group: A started ``StageGroup``.
    """

    def __init__(self, group: StageGroup) -> None:
        self.group = group
        self.cfg = group.cfg

    @classmethod
    def from_registry(
        cls, registry: Registry, name: str, version: int, config: PipelineConfig
    ) -> StagedGPT:
        """Plan ``name`` version ``version`` over ``config.num_stages`` stages and start them.

        Only config.json is read here (the model's shape is built on the meta device): each
        stage fetches and checks its own weights.

        Raises:
            IncompatibleModel: The version is not a GPT language model.
            InvalidSplit, StageOverBudget: The plan does not fit, before any actor starts.
            PipelineUnavailable: The stages could not be placed.
        """
        info = registry.get(name, version)
        with tempfile.TemporaryDirectory(prefix=f"aimass-plan-{name}-v{version}-") as tmp:
            folder = registry.fetch(info, Path(tmp), files=(package.CONFIG_FILE,))
            pkg = package.PackageConfig.read(folder)
        if architecture(pkg.architecture).task != LM:
            raise IncompatibleModel(
                f"{name}:{version} is a {pkg.architecture!r} model: only GPT language models "
                "run in pipeline stages.",
                model=name,
                version=str(version),
                architecture=pkg.architecture,
            )
        with torch.device("meta"):
            shape = build_model(pkg.architecture, **pkg.options)
        plan = plan_stages(shape, config, name=name, version=version)
        source = PackageSource(registry.tracking_uri, registry.artifact_root, name, version)
        group = StageGroup(source, shape.cfg, plan, config)
        group.start()
        return cls(group)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, vocab) of ``idx`` (B, T); blocks until they are back.

        Raises:
            PipelineUnavailable: Every attempt failed (the last failure is its cause).
        """
        import ray
        from ray.exceptions import ObjectLostError, RayActorError

        config, failure = self.group.config, None
        for _ in range(config.request_attempts):
            refs, generation = self.group.submit(idx)
            try:
                return torch.cat(ray.get(refs, timeout=config.forward_timeout_s), dim=0)
            except (RayActorError, ObjectLostError) as err:
                failure = err
            try:
                self.group.restart(generation)
            except (RayActorError, ObjectLostError) as err:  # a new stage died while loading
                failure = err
        raise PipelineUnavailable(
            f"{config.request_attempts} attempts failed; the last: {failure}",
            model=self.group.source.name,
            version=self.group.source.version,
        ) from failure

    def new_cache(self, batch: int) -> StagedCache:
        """An empty cache of ``batch`` rows, made on the stages by the first forward."""
        return StagedCache(self.group, torch.zeros(batch, dtype=torch.long))

    def forward_cached(self, idx: torch.Tensor, cache: StagedCache) -> torch.Tensor:
        """Logits (B, T, vocab) of T new tokens ``idx`` (B, T) after each row's cached ones, as
        ``GPT.forward_cached``; the stages' caches take their keys and values.

        Raises:
            CacheLost: The stages lost the cache (restarted, or dropped it): prefill again.
            PipelineUnavailable: Every attempt of a prefill failed.
        """
        from ray.exceptions import ObjectLostError, RayActorError

        config, failure = self.group.config, None
        start = cache.lengths.tolist()
        prefill = not any(start)
        for _ in range(config.request_attempts):
            if not prefill and cache.generation != self.group.generation:
                raise self._lost(cache, "the stages restarted since its prefill")
            ref, generation = self.group.submit_cached(cache.key, idx, start)
            cache.generation = generation
            try:
                logits = self.group.wait(ref)
            except CacheLost as err:  # Ray's wrapper of the stage's error: raise our own
                raise self._lost(cache, str(err).splitlines()[-1]) from None
            except (RayActorError, ObjectLostError) as err:
                failure = err
            else:
                cache.lengths += idx.shape[1]
                return logits
            try:
                self.group.restart(generation)
            except (RayActorError, ObjectLostError) as err:
                failure = err
            if not prefill:  # the caches went with the old stages
                raise self._lost(cache, f"a stage failed ({failure})") from failure
        raise PipelineUnavailable(
            f"{config.request_attempts} attempts failed; the last: {failure}",
            model=self.group.source.name,
            version=self.group.source.version,
        ) from failure

    def _lost(self, cache: StagedCache, why: str) -> CacheLost:
        return CacheLost(
            f"The stages no longer hold cache {cache.key} ({why}): prefill its rows again.",
            model=self.group.source.name,
            version=str(self.group.source.version),
        )

    async def logits_async(self, idx: torch.Tensor) -> torch.Tensor:
        """``logits`` on a worker thread, for callers on an event loop."""
        return await asyncio.to_thread(self.logits, idx)

    def __call__(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, None]:
        """``GPT.forward``'s shape of answer, (logits, None): stages serve, they do not train."""
        if targets is not None:
            raise ValueError("StagedGPT computes no loss: it serves; train the GPT itself.")
        return self.logits(idx), None

    # GPT's sampling, run over the staged forward: they only call ``self(idx)`` and read
    # ``self.cfg``, so the two models sample alike by construction.
    next_token = GPT.next_token
    generate = GPT.generate

    def eval(self) -> StagedGPT:
        """A no-op, as for a GPT already in eval mode (stages run in inference mode)."""
        return self

    def placement(self) -> list[StagePlacement]:
        return self.group.placement()

    def shutdown(self) -> None:
        self.group.shutdown()
