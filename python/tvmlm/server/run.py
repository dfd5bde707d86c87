"""`tvmlm serve`: one AsyncEngine behind the app on uvicorn, with a graceful shutdown.

SIGTERM or Ctrl-C starts the drain: new requests get 503 (and /health says so, for a load
balancer), requests in flight get up to `shutdown_timeout` seconds to finish, then the rest are
aborted in the core (their streams end with finish_reason "abort"); then uvicorn closes the
listener and the connections, the engine terminates (its threads joined) and `serve` returns,
so the process exits 0. A second Ctrl-C skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any

import uvicorn

from .app import DEFAULT_MAX_BODY_BYTES, ServerState, create_app

logger = logging.getLogger("tvmlm.server")

#: Seconds to wait after the aborts for the aborted streams to end.
_ABORT_GRACE_S = 3.0


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None
    shutdown_timeout: float = 5.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class _Server(uvicorn.Server):
    """uvicorn's server with tvmlm's shutdown: a signal drains the app before uvicorn stops."""

    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_timeout: float,
                 on_started: Any = None) -> None:
        super().__init__(config)
        self._state, self._shutdown_timeout, self._on_started = state, shutdown_timeout, on_started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_started = False

    @contextlib.contextmanager
    def capture_signals(self):
        # Unlike uvicorn's: the first signal drains, and nothing is re-raised afterwards (exit 0).
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._loop = asyncio.get_running_loop()
        originals = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:  # serving, and our signal handlers are in
            self._on_started()

    def _on_signal(self, sig: int, frame: Any) -> None:
        if self._drain_started:
            logger.warning("second signal: stopping now")
            self.force_exit = self.should_exit = True
            self._state.engine.abort_all()
            return
        self._drain_started = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self.drain()))

    async def drain(self) -> None:
        """Refuse new requests, let those in flight finish within the bound, abort the rest, exit."""
        state = self._state
        state.draining = True
        logger.info("shutting down: %d request(s) in flight get %.1f s to finish", state.in_flight,
                    self._shutdown_timeout)
        if not await state.wait_idle(self._shutdown_timeout):
            aborted = state.engine.abort_all()
            logger.warning("shutting down: aborted %d unfinished request(s)", aborted)
            await state.wait_idle(_ABORT_GRACE_S)
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one; `socket.getsockname()` tells which)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(engine: Any, options: ServeOptions, on_listening: Any = None) -> None:
    """Serve `engine` (an AsyncEngine) until a signal; the caller terminates the engine after.
    `on_listening((host, port), model_name)` is called once requests are served."""
    app = create_app(engine, served_model_name=options.served_model_name, api_key=options.api_key,
                     max_body_bytes=options.max_body_bytes)
    sock = bind(options.host, options.port)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=_ABORT_GRACE_S, timeout_keep_alive=5)
    address = sock.getsockname()[:2]
    announce = None if on_listening is None else (lambda: on_listening(address, app.state.tvmlm.model_name))
    server = _Server(config, app.state.tvmlm, options.shutdown_timeout, announce)
    server.run(sockets=[sock])
