"""Server-sent events of a generation: ``data: {"text": ...}`` per piece, then
``event: done`` (version, pieces, request id), or ``event: error`` if it fails midway.

The first piece decides the status: a refusal (the Generator's limits, the model) becomes
a 4xx/5xx before any byte of the 200 is sent; later failures can only be told in the
stream. Closing the connection cancels the generation on its replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from ray.serve.handle import DeploymentResponseGenerator

from serve_apps._private.upstream import upstream_error

logger = logging.getLogger("ray.serve")


async def stream_response(
    stream: DeploymentResponseGenerator, version: int, rid: str, timeout_s: float
) -> StreamingResponse:
    """The 200 streaming ``stream``'s pieces once its first one came within ``timeout_s``;
    else the ApiError its failure maps to (``upstream_error``)."""
    try:
        first = await asyncio.wait_for(first_piece(stream), timeout_s)
    except BaseException as err:
        if not isinstance(err, Exception):  # the client left (CancelledError): no answer
            raise
        raise upstream_error(err) from None
    return StreamingResponse(
        events(stream, first, version, rid),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Model-Version": str(version)},
    )


async def first_piece(stream: DeploymentResponseGenerator) -> str | None:
    """The stream's first piece (None: it had none); on any failure, or when the wait is
    cancelled, the generation is cancelled too before the error goes on."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        stream.cancel()
        raise


async def events(
    stream: DeploymentResponseGenerator, first: str | None, version: int, rid: str
) -> AsyncIterator[str]:
    """The events of a started generation; cancels it when the client goes away."""
    pieces = 0
    try:
        if first is not None:
            pieces += 1
            yield _event({"text": first})
        async for piece in stream:
            pieces += 1
            yield _event({"text": piece})
        yield _event({"version": version, "pieces": pieces, "request_id": rid}, "done")
    except Exception as err:  # after the 200: report it in the stream, never a traceback
        logger.warning("generation %s failed after %d pieces: %r", rid, pieces, err)
        yield _event({"error": "generation_failed", "request_id": rid}, "error")
    finally:
        stream.cancel()  # a no-op when finished; stops the replica when the client left


def _event(data: dict, kind: str | None = None) -> str:
    # json.dumps escapes everything outside ASCII (ensure_ascii): no piece of text can
    # break the event framing with a newline or fail to encode.
    line = f"data: {json.dumps(data)}\n\n"
    return f"event: {kind}\n{line}" if kind else line
