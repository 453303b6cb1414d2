"""One pipeline stage: its slice of a GPT, the weights it loads, and the actor that runs it.

``StageModule`` holds GPT's own modules (``wte``/``wpe`` on stage 0, ``blocks[first:end]``,
``ln_f``/``lm_head`` on the last stage) under GPT's state-dict names, so a slice loads the
full model's tensors by name and runs the same arithmetic: the stages run one after another
equal the whole model. ``PipelineStage`` is the plain class each stage actor runs (made
remote by ``actors.pipeline.group``).

Cached decoding: a stage keeps the ``KVCache`` of its own blocks for each decode batch, under a
key its caller chose (``forward_cached``), at most ``max_caches`` of them (the least recently
used goes first). A call whose cache is not there, or not at the positions the caller expects,
raises ``CacheLost``: a cache is never silently made up, so the caller prefills again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from actors.exceptions import StageOverBudget
from actors.pipeline.plan import StageSpec
from cluster.topology import datacenter_of
from models import package
from models.exceptions import CacheLost
from models.gpt import GPT, Block, GPTConfig, KVCache, run_blocks
from models.weights import read_tensors


class StageModule(nn.Module):
    """A contiguous slice of a GPT: token ids (B, T) or hidden states (B, T, D) in, hidden
    states (B, T, D) or, on the last stage, logits (B, T, vocab) out."""

    def __init__(self, cfg: GPTConfig, spec: StageSpec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        if spec.embeddings:
            self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
            self.drop = nn.Dropout(cfg.dropout)
        # A ModuleDict keyed by the global layer index keeps GPT's names ("blocks.5.ln1...").
        self.blocks = nn.ModuleDict({str(i): Block(cfg) for i in range(*spec.layers)})
        if spec.head:
            self.ln_f = nn.LayerNorm(cfg.n_embd)
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
            if spec.embeddings:  # one stage holds both ends: tied as in GPT
                self.lm_head.weight = self.wte.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.embeddings:
            t = x.shape[1]
            if t > self.cfg.block_size:
                raise ValueError(
                    f"Sequence of {t} tokens exceeds block_size {self.cfg.block_size}."
                )
            x = self.drop(self.wte(x) + self.wpe(torch.arange(t, device=x.device)))
        for block in self.blocks.values():
            x = block(x)
        if self.spec.head:
            x = self.lm_head(self.ln_f(x))
        return x

    # GPT's own arithmetic on the same module names: a slice embeds and projects as GPT does.
    embed = GPT.embed
    head = GPT.head

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """``forward`` for T new positions of each row after its ``cache.lengths`` cached ones
        (this stage's blocks' cache, which takes their keys and values)."""
        if self.spec.embeddings:
            x = self.embed(x, cache.lengths)
        x = run_blocks(list(self.blocks.values()), x, cache)
        return self.head(x) if self.spec.head else x

    def new_cache(self, batch: int) -> KVCache:
        """An empty cache for this stage's blocks."""
        w = next(self.parameters())
        n_blocks = self.spec.layers[1] - self.spec.layers[0]
        return KVCache.empty(self.cfg, batch, n_blocks, dtype=w.dtype, device=w.device)

    def param_bytes(self) -> int:
        """Bytes of the parameters actually held (a tied matrix once)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())


def build_stage(cfg: GPTConfig, spec: StageSpec, weights: Path) -> StageModule:
    """A stage's module with its slice of the weights in ``weights`` (strict: every name);
    only the slice's tensors are read from the file."""
    module = StageModule(cfg, spec)
    module.load_state_dict(read_tensors(weights, spec.tensors), strict=True)
    return module.eval()


@dataclass(frozen=True, slots=True)
class PackageSource:
    """Where a stage fetches its weights: a version in a registry (strings, so it pickles)."""

    tracking_uri: str
    artifact_root: str
    name: str
    version: int

    def fetch(self, dest: Path) -> Path:
        """The version's weights and config, downloaded into ``dest`` and SHA-256-checked
        against the manifest the registry recorded (``ArtifactIntegrityError`` otherwise)."""
        from models.registry import Registry  # MLflow: loaded in the stage's process only

        registry = Registry(self.tracking_uri, self.artifact_root)
        info = registry.get(self.name, self.version)
        files = (package.WEIGHTS_FILE, package.CONFIG_FILE)
        return registry.fetch(info, dest, files=files)


class PipelineStage:
    """The actor of one stage: loads its verified slice, then runs micro-batches in order.

    Args:
        source: The version its weights come from.
        cfg: The model's shape.
        spec: This stage's slice.
        budget_bytes: Most parameter bytes it may hold; None: no limit.
        threads: torch intra-op threads (its CPUs).
        max_caches: Decode caches it keeps (least recently used dropped first).
    """

    def __init__(
        self,
        source: PackageSource,
        cfg: GPTConfig,
        spec: StageSpec,
        budget_bytes: int | None = None,
        threads: int = 1,
        max_caches: int = 64,
    ) -> None:
        self.source, self.cfg, self.spec, self.budget_bytes = source, cfg, spec, budget_bytes
        torch.set_num_threads(threads)
        self.module: StageModule | None = None
        self.max_caches = max_caches
        self._caches: OrderedDict[str, KVCache] = OrderedDict()
        self.weights_sha256 = ""

    def load(self) -> int:
        """Fetch, verify and load this stage's weights; returns the parameter bytes held.

        Raises (to the caller, with their own types):
            ArtifactIntegrityError: A file's SHA-256 differs from the manifest.
            StageOverBudget: The loaded slice exceeds the budget.
        """
        with tempfile.TemporaryDirectory(prefix=f"aimass-stage-{self.spec.index}-") as tmp:
            folder = self.source.fetch(Path(tmp))
            module = build_stage(self.cfg, self.spec, folder / package.WEIGHTS_FILE)
            manifest = json.loads((folder / package.MANIFEST_FILE).read_text())
        held = module.param_bytes()
        if self.budget_bytes is not None and held > self.budget_bytes:
            raise StageOverBudget(
                f"Stage {self.spec.label} of {self.source.name}:{self.source.version} loaded "
                f"{held:,} bytes of parameters, over its budget of {self.budget_bytes:,} bytes.",
                model=self.source.name,
                version=self.source.version,
                stage=self.spec.label,
            )
        self.module = module
        self.weights_sha256 = manifest["files"][package.WEIGHTS_FILE]
        return held

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """This stage's slice applied to one micro-batch (see ``StageModule``)."""
        with torch.inference_mode():
            return self.module(x)

    def forward_cached(self, key: str, x: torch.Tensor, start: Sequence[int]) -> torch.Tensor:
        """This stage's slice applied to T new positions of each row of ``x`` after the
        ``start[b]`` positions the cache ``key`` holds; an all-zero ``start`` (a prefill)
        makes that cache.

        Raises:
            CacheLost: ``key`` is not held (dropped, or this stage restarted) or holds other
                positions than ``start``.
        """
        cache = self._caches.get(key)
        if cache is None and not any(start):
            cache = self.module.new_cache(len(x))
        elif cache is None or cache.lengths.tolist() != list(start):
            held = "none" if cache is None else cache.lengths.tolist()
            raise CacheLost(
                f"Stage {self.spec.label} holds no cache {key} at positions {list(start)} "
                f"(it holds {held}): prefill the rows again.",
                model=self.source.name,
                version=str(self.source.version),
            )
        with torch.inference_mode():
            out = self.module.forward_cached(x, cache)
        self._keep(key, cache)
        return out

    def cache_select(self, key: str, source: str, rows: Sequence[int]) -> None:
        """Keep ``rows`` of cache ``source`` as cache ``key`` (a stream left the batch)."""
        if (cache := self._caches.get(source)) is not None:
            self._keep(key, cache.select(rows))

    def cache_cat(self, key: str, sources: Sequence[str]) -> None:
        """The rows of caches ``sources``, one after another, as cache ``key`` (streams
        joined); nothing when one is missing: the next forward of ``key`` says CacheLost."""
        caches = [self._caches.get(s) for s in sources]
        if all(c is not None for c in caches):
            self._keep(key, KVCache.cat(caches))

    def cache_free(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._caches.pop(key, None)

    def cache_keys(self) -> list[str]:
        """The caches held, least recently used first."""
        return list(self._caches)

    def _keep(self, key: str, cache: KVCache) -> None:
        self._caches[key] = cache
        self._caches.move_to_end(key)
        while len(self._caches) > self.max_caches:
            self._caches.popitem(last=False)

    def describe(self) -> dict:
        """Where this stage runs and what it holds (for ``placement()``)."""
        import ray

        ctx = ray.get_runtime_context()
        labels = ctx.get_node_labels()
        return {
            "node_id": ctx.get_node_id(),
            "datacenter": datacenter_of(labels),
            "pid": os.getpid(),
            "layers": self.spec.layers,
            "param_bytes": self.module.param_bytes() if self.module else 0,
            "weights_sha256": self.weights_sha256,
        }
