"""A server-sent-events response that always ends its request, however the response ends.

Starlette's StreamingResponse stops at a client disconnect only on some ASGI versions (on ASGI
2.4 servers it keeps generating into a closed socket), and its body iterator's cleanup does not
run if the response is cancelled before the iterator started. This response streams in a task of
its own beside a disconnect watcher: a disconnect (or uvicorn cancelling the app at shutdown)
cancels the stream, and `on_end(status)` runs exactly once in every case, after the chunk stream
was closed (which aborts the request in the core if it had not finished).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from ..errors import TvmlmError
from .errors import error_body

from starlette.responses import Response


class SSEResponse(Response):
    """ASGI response: `data: <chunk json>` per chunk of `stream`, then `data: [DONE]`; a failure
    mid-stream sends an OpenAI error event instead of [DONE]."""

    media_type = "text/event-stream"

    def __init__(self, stream: Any, on_end: Callable[[str], None]) -> None:
        # Not Response.__init__: no body, so no content-length (the body is streamed).
        self.status_code, self.background = 200, None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.stream, self.on_end = stream, on_end
        self.status = "disconnected"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        sender = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(until_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            try:
                await self.stream.aclose()
            finally:
                self.on_end(self.status)

    async def _send_all(self, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async for chunk in self.stream:
                await _event(send, chunk.model_dump_json())
            status, last = "ok", "[DONE]"
        except TvmlmError as exc:
            status, last = "error", json.dumps(error_body(500, str(exc)))
        await _event(send, last)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.status = status


async def _event(send: Callable, data: str) -> None:
    await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})


async def until_disconnect(receive: Callable) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
