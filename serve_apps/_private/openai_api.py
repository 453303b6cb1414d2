"""The OpenAI API for language-model versions: ``POST /v1/completions`` and
``POST /v1/chat/completions``, plain or streamed, so OpenAI's clients (and everything built
on them) call aimass unchanged.

Spec: https://platform.openai.com/docs/api-reference/completions and /chat. ``model`` names
a registered model (``gpt``: its champion) or one version (``gpt:3``). Tokens are bytes
(the GPT is byte-level), so ``max_tokens`` and ``usage`` count UTF-8 bytes. A chat is
turned into one prompt, a line per message (``role: content``) then ``assistant:``; the
reply is what the model continues with (a ``stop`` of ``"\\n"`` ends it at the line's end).
``temperature: 0`` samples greedily. ``n`` choices (and several prompts) each get their
own stream, with ``seed + i`` when a seed is given. What this module does is translate:
admission, version lookup and calling the Generator are the gateway's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from serve_apps._private.http import ApiError
from serve_apps._private.upstream import upstream_error
from serve_apps.schemas import FiniteFloat

logger = logging.getLogger("ray.serve")
MAX_CHOICES = 8  # streams one request may start: prompts x n
Stop = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Sampling(BaseModel):
    """What both routes take. Fields OpenAI has and a byte-level GPT cannot honour
    (logprobs, penalties, tools...) are refused as unknown fields."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="`gpt` or `gpt:3`.")
    temperature: FiniteFloat = Field(1.0, ge=0, le=2, description="0 samples greedily.")
    top_p: FiniteFloat = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Stop | list[Stop] | None = Field(None, description="Up to 4 sequences.")
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: dict[Literal["include_usage"], bool] | None = None
    user: str | None = Field(None, max_length=256)

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @model_validator(mode="after")
    def _few_stops(self):
        if len(self.stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return self


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    echo: Literal[False] = False
    suffix: None = None
    logprobs: None = None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part]
    name: str | None = Field(None, max_length=64)

    @property
    def text(self) -> str:
        return (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Literal[False] | None = None

    @property
    def prompts(self) -> list[str]:
        return ["".join(f"{m.role}: {m.text}\n" for m in self.messages) + "assistant:"]

    @property
    def tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256


@dataclass(slots=True)
class Choice:
    """One stream's text so far, held back while it may be the start of a stop sequence."""

    index: int
    stops: list[str]
    text: str = ""
    held: str = ""
    finish_reason: str | None = None
    sampled: int = 0  # bytes (tokens) the model produced for it, past a stop included

    def feed(self, piece: str) -> str:
        """What of ``piece`` can be sent now; sets ``finish_reason`` at a stop sequence."""
        self.sampled += len(piece.encode())
        pending = self.held + piece
        found = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
        if found:
            self.held, self.finish_reason = "", "stop"
            return self._sent(pending[: min(found)])
        keep = max((len(s) - 1 for s in self.stops), default=0)
        cut = max(len(pending) - keep, 0)
        self.held = pending[cut:]
        return self._sent(pending[:cut])

    def end(self) -> str:
        """The stream ran out (``max_tokens``): what was held back goes out."""
        self.finish_reason = self.finish_reason or "length"
        rest, self.held = self.held, ""
        return self._sent(rest)

    def _sent(self, text: str) -> str:
        self.text += text
        return text


class Started:
    """A generation whose first piece came: it, then the rest; ``cancel`` stops it."""

    def __init__(self, stream, first: str | None) -> None:
        self.stream, self.first = stream, first

    async def __aiter__(self) -> AsyncIterator[str]:
        if self.first is not None:
            yield self.first
        async for piece in self.stream:
            yield piece

    def cancel(self) -> None:
        self.stream.cancel()


Start = Callable[[str, int, int | None], Awaitable[Started]]
"""Starts one generation: (prompt, max_tokens, seed) -> it, its first piece in."""


def sampling(body: CompletionRequest | ChatRequest) -> tuple[float, int | None, float | None]:
    """The Generator's temperature, top_k and top_p for ``body``: temperature 0 is greedy."""
    top_p = body.top_p if body.top_p < 1 else None
    return (1.0, 1, None) if body.temperature == 0 else (body.temperature, None, top_p)


async def _run(choice: Choice, pieces: Started, out: asyncio.Queue | None) -> None:
    """Read one choice's stream to its end or a stop sequence; with ``out``, send each
    piece there as it is ready, then ``(index, "", finish_reason, error)``."""
    error = None
    try:
        async for piece in pieces:
            sent = choice.feed(piece)
            if sent and out is not None:
                await out.put((choice.index, sent, None, None))
            if choice.finish_reason:
                break
        sent = choice.end()
        if sent and out is not None:
            await out.put((choice.index, sent, None, None))
    except Exception as err:
        if out is None:
            raise
        error = err
    finally:
        pieces.cancel()  # a no-op when finished; stops the replica at a stop sequence
    if out is not None:
        await out.put((choice.index, "", choice.finish_reason, error))


async def started(
    body: CompletionRequest | ChatRequest, start: Start, timeout_s: float
) -> list[tuple[Choice, Started, str]]:
    """Every choice's stream, started, with its prompt: the first failure (within
    ``timeout_s``) is the request's 4xx/5xx, before any byte of the answer."""
    tokens = body.max_tokens if isinstance(body, CompletionRequest) else body.tokens
    jobs = [
        (p * body.n + i, prompt, None if body.seed is None else (body.seed + i) % 2**63)
        for p, prompt in enumerate(body.prompts)
        for i in range(body.n)
    ]
    if len(jobs) > MAX_CHOICES:
        raise ApiError(400, "invalid_input", f"prompts x n is {len(jobs)}; at most {MAX_CHOICES}.")
    runs = [asyncio.wait_for(start(prompt, tokens, seed), timeout_s) for _, prompt, seed in jobs]
    streams = await asyncio.gather(*runs, return_exceptions=True)
    failed = [s for s in streams if isinstance(s, BaseException)]
    if failed:
        for s in streams:
            if isinstance(s, Started):
                s.cancel()
        if not isinstance(failed[0], Exception):  # the client left (CancelledError)
            raise failed[0]
        raise upstream_error(failed[0]) from None
    return [
        (Choice(i, body.stops), s, prompt) for (i, prompt, _), s in zip(jobs, streams, strict=True)
    ]


def _usage(choices: list[tuple[Choice, Started, str]], context: int) -> dict:
    prompts = {id(p): p for _, _, p in choices}  # each prompt counted once
    prompt_tokens = sum(min(len(p.encode()), context) for p in prompts.values())
    completion = sum(c.sampled for c, _, _ in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _choice(chat: bool, choice: Choice, text: str, finish: str | None, delta: bool) -> dict:
    base = {"index": choice.index, "logprobs": None, "finish_reason": finish}
    if not chat:
        return {**base, "text": text}
    if delta:
        return {**base, "delta": {"role": "assistant", "content": text} if text else {}}
    return {**base, "message": {"role": "assistant", "content": text}}


async def answer(
    body: CompletionRequest | ChatRequest,
    choices: list[tuple[Choice, Started, str]],
    served_as: str,
    rid: str,
    context: int,
) -> JSONResponse | StreamingResponse:
    """The completion, whole or as OpenAI's server-sent chunks ending in ``data: [DONE]``.
    ``served_as`` (``gpt:3``) is the answer's ``model``; ``context``: the model's block size
    (a longer prompt is cut to its end, so it counts that many tokens)."""
    chat = isinstance(body, ChatRequest)
    head = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{rid}",
        "created": int(time.time()),
        "model": served_as,
    }
    if not body.stream:
        try:
            await asyncio.gather(*(_run(c, s, None) for c, s, _ in choices))
        except Exception as err:
            raise upstream_error(err) from None
        finally:
            for _, s, _ in choices:
                s.cancel()
        return JSONResponse(
            {
                **head,
                "object": "chat.completion" if chat else "text_completion",
                "choices": [
                    _choice(chat, c, c.text, c.finish_reason, False) for c, _, _ in choices
                ],
                "usage": _usage(choices, context),
            }
        )
    return StreamingResponse(
        _chunks(body, choices, head, context),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _chunks(body, choices, head: dict, context: int) -> AsyncIterator[str]:
    chat = isinstance(body, ChatRequest)
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
    out: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.ensure_future(_run(c, s, out)) for c, s, _ in choices]
    by_index = {c.index: c for c, _, _ in choices}
    try:
        finished = 0
        while finished < len(tasks):
            index, text, finish, error = await out.get()
            if error is not None:
                raise error
            finished += finish is not None
            chunk = _choice(chat, by_index[index], text, finish, True)
            yield _data({**head, "choices": [chunk]})
        if (body.stream_options or {}).get("include_usage"):
            yield _data({**head, "choices": [], "usage": _usage(choices, context)})
        yield "data: [DONE]\n\n"
    except Exception as err:  # after the 200: say so in the stream, never a traceback
        logger.warning("completion %s failed midway: %r", head["id"], err)
        yield _data({"error": {"message": "The generation failed.", "type": "server_error"}})
    finally:
        for task in tasks:
            task.cancel()  # the client left: each task's finally cancels its stream


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"  # ASCII-escaped: no text can break the framing
