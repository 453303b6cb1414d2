"""Continuous batching for the Generator: the streams of one model share each forward.

``DecodeBatch`` is the torch side, run on the forward thread: its rows are streams; each
``step`` drops the streams that left, runs one decode forward for all rows in the KV cache
(their last token each, against their own cached positions), recomputes the rows that have
no cache, then prefills the streams joining (one forward each) so they decode with the
others from the next step on. Each row samples with its own ``torch.Generator``: a seeded
stream draws the same numbers alone or batched. The model is a ``GPT`` or a pipeline's
``StagedGPT`` (same calls; its cache a handle on the stages'): when the stages lost the
cache (``CacheLost``: their group restarted), the cached rows are prefilled again from their
tokens, whose last logits are the ones the lost step would have given.

``DecodeLoop`` is the asyncio side: one per loaded model, it steps the batch on the forward
thread while streams are active and hands each stream its tokens through a queue, a few
tokens ahead of its consumer at most.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TypeVar

import torch

from models.exceptions import CacheLost
from models.gpt import GPT, sample

_T = TypeVar("_T")
Forward = Callable[[Callable[[], _T]], Awaitable[_T]]
"""Runs a function on the forward thread; awaits its result."""


@dataclass(eq=False, slots=True)
class Row:
    """One stream in a batch: its tokens so far and how it samples."""

    context: list[int]
    """Prompt then sampled tokens (ids); grows by one per step."""
    remaining: int
    """Tokens still to sample."""
    temperature: float
    top_k: int | None
    rng: torch.Generator
    use_cache: bool = True
    """False: every token runs the whole context again (the uncached baseline)."""
    top_p: float | None = None
    """Nucleus sampling: the most likely tokens that make up this much probability."""
    cancelled: bool = False
    """Set from the event loop when the consumer left: the row leaves at the next step."""


class DecodeBatch:
    """The rows decoding from one model; ``step`` advances every row by one token.

    A row with a cache has all of ``context`` but its last token cached, so a step runs that
    token alone. Rows without one (``use_cache`` off, or a context past ``block_size``: the
    window slides and every learned position shifts) run their last ``block_size`` tokens,
    batched with rows of the same length.
    """

    def __init__(self, model: GPT) -> None:
        self.model = model
        self.block = model.cfg.block_size
        self._cached: list[Row] = []  # row i of self._cache
        self._cache = None  # a KVCache, or a StagedCache: the same select and cat
        self._uncached: list[Row] = []
        self.forwards = 0
        """Model forwards run so far (decode steps, recomputed groups, prefills)."""

    @property
    def rows(self) -> list[Row]:
        return self._cached + self._uncached

    def step(self, joining: Sequence[Row] = ()) -> list[tuple[Row, int]]:
        """One token for every row, then prefill ``joining``; returns each (row, token)."""
        self._keep(lambda r: not r.cancelled and r.remaining > 0)
        # A row whose next position would be block_size leaves the cache for good.
        full = [r for r in self._cached if len(r.context) > self.block]
        self._uncached += full
        self._leave_cache(full)
        produced: list[tuple[Row, int]] = []
        if self._cached:
            last = torch.tensor([r.context[-1:] for r in self._cached])  # (B, 1)
            try:
                logits = self.model.forward_cached(last, self._cache)
            except CacheLost:
                logits = self._prefill_again()
            produced += self._sample(self._cached, logits)
        produced += self._recompute(self._uncached)
        for row in joining:
            if not row.cancelled:
                produced += self._prefill(row)
        self._keep(lambda r: r.remaining > 0)
        return produced

    def _prefill_again(self) -> torch.Tensor:
        """A new cache of every cached row's whole context, one prefill each; returns the
        logits (B, 1, vocab) of their last positions."""
        caches, logits = [], []
        for row in self._cached:
            caches.append(self.model.new_cache(1))
            idx = torch.tensor([row.context])
            logits.append(self.model.forward_cached(idx, caches[-1])[:, -1:])
            self.forwards += 1
        self._cache = type(caches[0]).cat(caches)
        return torch.cat(logits)

    def _prefill(self, row: Row) -> list[tuple[Row, int]]:
        if not row.use_cache or len(row.context) > self.block:
            self._uncached.append(row)
            return self._recompute([row])
        cache = self.model.new_cache(1)
        produced = self._sample(
            [row], self.model.forward_cached(torch.tensor([row.context]), cache)
        )
        self._cache = cache if self._cache is None else type(cache).cat([self._cache, cache])
        self._cached.append(row)
        return produced

    def _recompute(self, rows: list[Row]) -> list[tuple[Row, int]]:
        produced = []
        window = lambda r: min(len(r.context), self.block)  # noqa: E731
        for _, same in groupby(sorted(rows, key=window), key=window):
            group = list(same)
            idx = torch.tensor([r.context[-self.block :] for r in group])  # (B, T)
            produced += self._sample(group, self.model(idx)[0])
        return produced

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> list[tuple[Row, int]]:
        """Each row's next token from the last position of its ``logits`` (B, T, vocab)."""
        self.forwards += 1
        produced = []
        for i, row in enumerate(rows):
            token = int(
                sample(logits[i : i + 1, -1], row.temperature, row.top_k, row.rng, row.top_p)
            )
            row.context.append(token)
            row.remaining -= 1
            produced.append((row, token))
        return produced

    def _keep(self, keep: Callable[[Row], bool]) -> None:
        self._uncached = [r for r in self._uncached if keep(r)]
        self._leave_cache([r for r in self._cached if not keep(r)])

    def _leave_cache(self, leaving: list[Row]) -> None:
        if not leaving:
            return
        staying = [i for i, r in enumerate(self._cached) if r not in leaving]
        self._cached = [self._cached[i] for i in staying]
        self._cache = self._cache.select(staying) if staying else None


class Stream:
    """A row's tokens as they come: ``async for token in stream``; ``cancel`` to leave."""

    def __init__(self, row: Row, on_change: Callable[[], None]) -> None:
        self.row = row
        self._queue: asyncio.Queue[int | BaseException | None] = asyncio.Queue()
        self._on_change = on_change

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> int:
        item = await self._queue.get()
        self._on_change()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    @property
    def backlog(self) -> int:
        """Tokens computed that the consumer has not taken yet."""
        return self._queue.qsize()

    def cancel(self) -> None:
        self.row.cancelled = True
        self._on_change()

    def put(self, item: int | BaseException | None) -> None:
        self._queue.put_nowait(item)


class DecodeLoop:
    """Steps one model's ``DecodeBatch`` on the forward thread while it has streams.

    Tokens are computed ahead of their consumers, by at most ``ahead`` for the fastest of
    them: steps pause while every stream has that many waiting, so a lone stream runs no
    further ahead of its consumer, while one slow consumer does not hold the others back.
    A stream cancelled is dropped at the next step: the step running when it left is its last.
    """

    def __init__(self, model: GPT, forward: Forward, ahead: int = 8) -> None:
        self.batch = DecodeBatch(model)
        self._forward = forward
        self._ahead = ahead
        self._joining: list[Stream] = []
        self._streams: dict[Row, Stream] = {}
        self._changed = asyncio.Event()  # a stream took a token or was cancelled
        self._task: asyncio.Task | None = None

    def submit(self, row: Row) -> Stream:
        """Add ``row`` at the next step; its tokens come through the returned stream."""
        if self._task is None or self._task.done():
            # Made here, not in __init__: an Event belongs to the event loop it first waits in.
            self._changed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        stream = Stream(row, self._wake)
        self._joining.append(stream)
        self._wake()
        return stream

    def _wake(self) -> None:
        self._changed.set()

    def _saturated(self) -> bool:
        """Every open stream has ``ahead`` tokens waiting, and none is joining."""
        open_ = [s for s in self._streams.values() if not s.row.cancelled]
        return not self._joining and bool(open_) and all(s.backlog >= self._ahead for s in open_)

    async def _run(self) -> None:
        while self._joining or self.batch.rows:
            while self._saturated():
                self._changed.clear()
                await self._changed.wait()
            joining, self._joining = self._joining, []
            self._streams.update((s.row, s) for s in joining)
            try:
                rows = [s.row for s in joining]
                produced = await self._forward(functools.partial(self.batch.step, rows))
            except Exception as err:  # every stream of the batch fails with it
                for stream in self._streams.values():
                    stream.put(err)
                self._streams.clear()
                self.batch = DecodeBatch(self.batch.model)
                continue
            for row, token in produced:
                self._streams[row].put(token)
            for row in [r for r in self._streams if r.cancelled or not r.remaining]:
                self._streams.pop(row).put(None)
