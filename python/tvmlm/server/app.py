"""The OpenAI-compatible HTTP app (FastAPI) over an `AsyncEngine`.

    GET  /health               200 {"status": "ok"}; 503 while shutting down
    GET  /metrics              Prometheus text (metrics.py)
    GET  /v1/models            the served model
    POST /v1/chat/completions  body = engine.chat.completions.create's arguments
    POST /v1/completions       body = engine.completions.create's arguments

Request bodies are validated by the same protocol models as the Python API (tvmlm.protocol), so
every field and every message is the same on both. A streamed response is server-sent events
ending with `data: [DONE]`. Errors have OpenAI's shape (errors.py): 400 invalid request, 401
missing or wrong API key (when one is set; /health and /metrics stay open), 404 unknown model or
path, 413 body too large, 503 while shutting down. A client that disconnects aborts its request in
the core. Each request logs one INFO line on the "tvmlm.server" logger when it ends.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import EngineClosedError, RequestError, TvmlmError
from .errors import HTTPError, error_response
from .metrics import ServerMetrics
from .sse import SSEResponse, until_disconnect

logger = logging.getLogger("tvmlm.server")

#: Largest request body accepted (413 above it).
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass
class ServerState:
    """What the app's handlers share; `draining` is set when shutdown begins."""

    engine: Any
    model_name: str
    api_key: str | None
    max_body_bytes: int
    metrics: ServerMetrics
    draining: bool = False
    in_flight: int = 0
    idle: asyncio.Event | None = field(default=None, repr=False)  # set while in_flight == 0

    def begin(self) -> None:
        self.in_flight += 1
        if self.idle is not None:
            self.idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.idle is not None:
            self.idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        if self.in_flight == 0:
            return True
        if self.idle is None:
            self.idle = asyncio.Event()
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def create_app(engine: Any, *, served_model_name: str | None = None, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """An app serving `engine` (a tvmlm.AsyncEngine) as `served_model_name` (default: the model's
    file or directory name). The app does not own the engine: whoever made it terminates it."""
    app = FastAPI(title="tvmlm", docs_url=None, redoc_url=None, openapi_url=None)
    state = ServerState(engine, served_model_name or engine.model_name, api_key or None, max_body_bytes,
                        ServerMetrics(engine))
    app.state.tvmlm = state

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(HTTPError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error serving %s", request.url.path)
        return error_response(HTTPError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @app.get("/health")
    async def health() -> dict[str, str]:
        if state.draining:
            raise HTTPError(503, "the server is shutting down")
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _check_key(state, request)
        return {"object": "list", "data": [_model_card(state.model_name)]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request) -> dict[str, Any]:
        _check_key(state, request)
        _check_model(state, model)
        return _model_card(state.model_name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(state, request, state.engine.chat.completions.create)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(state, request, state.engine.completions.create)

    return app


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "tvmlm"}


def _check_key(state: ServerState, request: Request) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise HTTPError(401, "missing API key: send the header 'Authorization: Bearer <key>'", "invalid_api_key")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), state.api_key.encode()):
        raise HTTPError(401, "incorrect API key", "invalid_api_key")


def _check_model(state: ServerState, model: Any) -> None:
    if model is not None and model != state.model_name:
        raise HTTPError(404, f"model {model!r} does not exist; this server serves {state.model_name!r}",
                        "model_not_found", "model")


async def _read_json(state: ServerState, request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > state.max_body_bytes:
        raise HTTPError(413, f"the request body has {length} bytes; the limit is {state.max_body_bytes}")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > state.max_body_bytes:
            raise HTTPError(413, f"the request body is over the limit of {state.max_body_bytes} bytes")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise HTTPError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


class _RequestLog:
    """Times one request; on end, logs its line and feeds the histograms."""

    def __init__(self, state: ServerState) -> None:
        self.state, self.t0 = state, time.perf_counter()

    def end(self, status: str, response_id: str, usage: Any) -> None:
        seconds = time.perf_counter() - self.t0
        prompt = getattr(usage, "prompt_tokens", 0) or 0
        completion = getattr(usage, "completion_tokens", 0) or 0
        extra = getattr(usage, "extra", None) or {}
        ttft, itl = extra.get("time_to_first_token_s"), extra.get("inter_token_latency_s")
        self.state.metrics.observe(status, seconds, completion, ttft, itl)
        logger.info("request %s %s: prompt_tokens=%d completion_tokens=%d ttft=%s total=%.3fs",
                    response_id, status, prompt, completion,
                    f"{ttft:.3f}s" if ttft is not None else "-", seconds)


async def _generate(state: ServerState, request: Request, create: Any) -> Response | SSEResponse:
    """Validate (by the Python API's own protocol models) and run one generation request."""
    _check_key(state, request)
    if state.draining:
        raise HTTPError(503, "the server is shutting down; retry on another replica")
    body = await _read_json(state, request)
    _check_model(state, body.get("model"))
    log = _RequestLog(state)
    state.begin()
    try:
        result = await _unless_disconnected(request, create(**body))
    except BaseException as exc:
        state.end()
        status, http = next(((s, h) for kind, (s, h) in _STATUS_OF.items() if isinstance(exc, kind)),
                            ("error", 500))
        log.end(status, "-", None)
        if isinstance(exc, TvmlmError):
            raise HTTPError(http, str(exc)) from None
        raise
    if result is None or not hasattr(result, "__aiter__"):  # disconnected, or a whole response
        state.end()
        log.end("ok" if result is not None else "disconnected", getattr(result, "id", "-"), getattr(result, "usage", None))
        if result is None:
            return Response(status_code=499)
        return JSONResponse(result.model_dump(mode="json"))

    def on_end(status: str) -> None:
        state.end()
        log.end(status, result.response_id, result.usage)

    return SSEResponse(result, on_end)


# Errors of create() -> (log status, HTTP status); the first matching class wins.
_STATUS_OF = {RequestError: ("invalid", 400), EngineClosedError: ("unavailable", 503), TvmlmError: ("error", 500)}


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """Run `work`; cancel it (aborting its request) and return None if the client goes away."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
