"""`AsyncEngine`: the Engine for asyncio code, with the shapes of the openai package's AsyncOpenAI.

    async with AsyncEngine("path/to/model", mode="server") as engine:
        r = await engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
        async for chunk in await engine.chat.completions.create(messages=..., stream=True):
            print(chunk.choices[0].delta.content or "", end="")

Same constructor, presets, C++ core, request building and text streaming as `Engine` (it is one):
only the wait differs. Requests open their inboxes with `notify=True`, so the C++ DeltaRouter also
puts their ids in its ready set; one waiter thread waits there with the GIL released and, per
batch of ready ids, wakes the requests' tasks with one `loop.call_soon_threadsafe`. A woken task
takes its deltas without blocking (`inbox.poll()`) and turns them into text with the same
`generation.Request.feed` the blocking iterator uses. The event loop never waits on the core.

Cancelling a task that awaits a request, or closing a stream early (`aclose`, leaving an
`async for`), aborts the request in the core and frees its KV pages.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator

from . import api, protocol
from .engine import Engine
from .generation import Output, Request


class AsyncEngine(Engine):
    """An `Engine` whose `chat.completions.create` and `completions.create` are coroutines."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._waiter: threading.Thread | None = None
        # request id -> (its loop, the event its task waits on)
        self._ready_events: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        super().__init__(*args, **kwargs)
        self._waiter = threading.Thread(target=self._wake_ready, name="tvmlm-async-waiter", daemon=True)
        self._waiter.start()
        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.terminate()

    def terminate(self) -> None:
        """As Engine.terminate (unfinished requests end with "abort"), then join the waiter thread."""
        super().terminate()  # closes the router, which ends the waiter's wait
        waiter, self._waiter = self._waiter, None
        if waiter is not None and waiter is not threading.current_thread():
            waiter.join()

    def abort_all(self) -> int:
        """Abort every request this engine is serving; how many there were."""
        ids = list(self._ready_events)
        for request_id in ids:
            self.generator.abort(request_id)
        return len(ids)

    # ---- waiting without blocking the loop -----------------------------------------------------
    def _wake_ready(self) -> None:
        """The waiter thread: ready request ids -> their tasks' events, one hop per loop."""
        router = self.generator.router
        while (ids := router.wait_ready()) is not None:
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
            for request_id in ids:
                entry = self._ready_events.get(request_id)
                if entry is not None:
                    by_loop.setdefault(entry[0], []).append(entry[1])
            for loop, events in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_set_all, events)
                except RuntimeError:  # that loop is closed: nobody waits there any more
                    pass

    def _start(self, prepared: api.Prepared) -> list[Request]:
        """Queue the prompt(s), each with the event its task waits on."""
        requests = api.start_requests(self.generator, prepared, notify=True)
        loop = asyncio.get_running_loop()
        for request in requests:
            self._ready_events[request.request_id] = (loop, asyncio.Event())
        return requests

    async def _outputs(self, request: Request) -> AsyncIterator[Output]:
        """The async twin of `Request.outputs`: same `feed`, awaited instead of blocking."""
        try:
            _, event = self._ready_events[request.request_id]
            while not request.finished:
                deltas = request.inbox.poll()
                if deltas is None:  # nothing yet: wait for the waiter thread's wake-up
                    event.clear()
                    await event.wait()
                    continue
                for out in request.feed(deltas):
                    yield out
        finally:
            self._finish([request])

    def _finish(self, requests: list[Request], response_id: str | None = None) -> None:
        for request in requests:
            request.close()  # aborts in the core unless every choice finished
            self._ready_events.pop(request.request_id, None)
        if response_id is not None:  # a batch's group, registered by api.start_requests
            self.generator.request_groups.pop(response_id, None)


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


class AsyncStream:
    """The chunks of a streamed response (`async for`), like openai's AsyncStream.

    `aclose()` (or leaving an `async with`) before the end aborts the request. `usage` holds the
    token counts so far and, once finished, the latencies (usage.extra)."""

    def __init__(self, engine: AsyncEngine, requests: list[Request], shaper: Any) -> None:
        self._engine, self._requests, self._shaper = engine, requests, shaper
        self._chunks = _chunks(engine, requests, shaper)  # holds no reference back: `del` finalizes

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self):
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()
        self._engine._finish(self._requests, self._shaper.id)  # also when iteration never started

    close = aclose

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:  # dropped without aclose: abort unless finished, forget its event
        self._engine._finish(self._requests, self._shaper.id)

    @property
    def response_id(self) -> str:
        return self._shaper.id

    @property
    def usage(self) -> protocol.CompletionUsage:
        return self._shaper.usage(self._requests[0].timing)


async def _chunks(engine: AsyncEngine, requests: list[Request], shaper: Any):
    for i, request in enumerate(requests):  # all run in the core at once; streamed prompt by prompt
        async for out in engine._outputs(request):
            for chunk in shaper.chunks(api.renumber(out, i, shaper.n)):
                yield chunk
    for chunk in shaper.end(requests[0].timing):
        yield chunk


async def _respond(engine: AsyncEngine, prepared: api.Prepared):
    requests = engine._start(prepared)
    shaper = prepared.shaper
    if prepared.req.stream:
        return AsyncStream(engine, requests, shaper)
    try:
        outputs = [api.renumber(out, i, shaper.n) for i, request in enumerate(requests)
                   async for out in engine._outputs(request)]
    finally:
        engine._finish(requests, shaper.id)  # a cancelled task aborts the prompts it did not reach
    return shaper.whole(outputs, requests[0].timing)


class _AsyncChatCompletions:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, *, messages: list[dict[str, Any]] = api._UNSET, stream: bool = False, **kwargs: Any):
        """As AsyncOpenAI's chat.completions.create: a ChatCompletion, or (stream) an AsyncStream of
        ChatCompletionChunks."""
        return await _respond(self._engine, api.prepare_chat(self._engine.generator, self._engine.model_name, messages, stream, kwargs))


class AsyncChat:
    def __init__(self, engine: AsyncEngine) -> None:
        self.completions = _AsyncChatCompletions(engine)


class AsyncCompletions:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, *, prompt: str | list[int] = api._UNSET, stream: bool = False, **kwargs: Any):
        """As AsyncOpenAI's completions.create: a Completion, or (stream) an AsyncStream of them."""
        return await _respond(self._engine, api.prepare_completion(self._engine.generator, self._engine.model_name, prompt, stream, kwargs))
