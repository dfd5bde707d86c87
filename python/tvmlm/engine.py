"""The blocking `Engine`: an eager constructor over the C++ threaded core (APIs in api.py).

    with Engine("path/to/model", device="auto", mode="local") as engine:
        engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])

Construction does everything that can fail (validate, resolve and compile the package
(compile.py), tokenizer, threads, KV cache) so errors surface there, not at the first request.
The engine owns the core's lifecycle and metrics; requests go through its `generation.Generator`
to the core's queue. The core's stream-back thread hands their deltas to a `_core.DeltaRouter`,
which sorts them into per-request inboxes in C++ (no GIL, no Python thread hop), where the
caller's thread (or iterator) waits with the GIL released.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .api import Chat, Completions
from .compile import resolve_package
from .config import MODES, EngineConfig, format_resolved_config, resolve_engine_config
from .devices import available_memory, resolve_device
from .errors import ConfigError, EngineClosedError, ModelError, OutOfMemoryError, TvmlmError
from .generation import Generator
from .tokenizer import Tokenizer

logger = logging.getLogger("tvmlm")

# Engines still running when the interpreter exits are terminated by atexit, before finalization:
# left to __del__ during finalization, their threads would return into an interpreter that no
# longer takes them back (pthread_exit inside pybind11's GIL guard: the process aborts).
_live_engines: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _terminate_live_engines() -> None:
    for engine in list(_live_engines):
        engine.terminate()


def _sampling_defaults(package_dir: Path) -> dict[str, Any]:
    """temperature/top_p/top_k/min_p/repetition_penalty from the model's generation_config.json,
    when it sets them (as vLLM does; `do_sample` is ignored, so an unset temperature stays
    OpenAI's default of 1.0)."""
    try:
        gen = json.loads((package_dir / "generation_config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(gen, dict):
        return {}
    keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
    return {k: gen[k] for k in keys if isinstance(gen.get(k), (int, float)) and not isinstance(gen[k], bool)}


class Engine:
    """A loaded model behind the C++ threaded engine. See the module docstring."""

    def __init__(
        self,
        model: str | os.PathLike,
        device: str = "auto",
        *,
        model_lib: str | None = None,
        mode: str = "local",
        engine_config: EngineConfig | None = None,
        enable_tracing: bool = False,
    ) -> None:
        self._closed = True  # until fully built: terminate()/__del__ must be safe on a half-made engine
        self._threads: list[threading.Thread] = []
        self._core = None
        self._router = None
        self._trace = None
        self.generator: Generator | None = None
        t0 = time.perf_counter()
        # 1. validate the arguments before touching the disk.
        if not isinstance(model, (str, os.PathLike)):
            raise ConfigError.bad_value("model", model, "a path (str or os.PathLike): an HF directory, a .gguf file or a compiled package")
        if model_lib is not None and not isinstance(model_lib, (str, os.PathLike)):
            raise ConfigError.bad_value("model_lib", model_lib, "a path (str or os.PathLike) to a compiled lib.so, or None")
        if mode not in MODES:
            raise ConfigError.bad_value("mode", mode, MODES)
        if engine_config is not None and not isinstance(engine_config, EngineConfig):
            raise ConfigError.bad_value("engine_config", engine_config, "a tvmlm.EngineConfig or None")
        if model_lib is not None and not Path(model_lib).expanduser().is_file():
            raise ModelError(f"model_lib={str(model_lib)!r} does not exist (expected a compiled lib.so)")
        self.device = resolve_device(device)
        # 2-3. resolve the model and compile (cached) when no library is given.
        quantization = engine_config.quantization if engine_config is not None else None
        kv_dtype = engine_config.kv_dtype if engine_config is not None else None
        self.package_dir, self.metadata, compiled = resolve_package(model, self.device, model_lib, quantization, kv_dtype)
        self.model_name = Path(model).name
        # 4. tokenizer and chat template; the model's own sampling defaults (generation_config.json)
        # apply to fields a request leaves unset, as in transformers and vLLM.
        self.tokenizer = Tokenizer(self.package_dir)
        self.sampling_defaults = _sampling_defaults(self.package_dir)
        # Mode presets sized from the model and this device's memory; the user's fields win.
        resolved, sources = resolve_engine_config(
            mode, engine_config, self.metadata, self.device.kind, available_memory(self.device)
        )
        self.config = resolved
        logger.info("engine config (%s on %s): %s", mode, self.device, format_resolved_config(resolved, sources))
        # 5-7. the C++ core, its two loops, then the KV cache.
        from . import _core

        self._core = _core.ThreadedEngine()
        self._router = _core.DeltaRouter()  # the stream callback, in C++
        # The trace recorder, in C++ too: recording an event never takes the GIL.
        self._trace = _core.TraceBuffer() if enable_tracing else None
        self._core.init(str(self.device) if self.device.kind != "cpu" else "cpu:0", self._router, self._trace)
        self._threads = [
            threading.Thread(target=self._core.run_background_loop, name="tvmlm-step-loop", daemon=True),
            threading.Thread(target=self._core.run_background_stream_back_loop, name="tvmlm-stream-back", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._closed = False
        _live_engines.add(self)
        try:
            self._core.reload(json.dumps(resolved.core_config(str(self.package_dir))))
        except BaseException as exc:
            self.terminate()
            if isinstance(exc, RuntimeError) and "memory" in str(exc).lower():
                raise OutOfMemoryError(str(exc)) from exc
            if isinstance(exc, (RuntimeError, ValueError)) and not isinstance(exc, TvmlmError):
                raise ModelError(f"the core could not load the package {str(self.package_dir)!r}: {exc}") from exc
            raise
        self.generator = Generator(self._core, self._router, self.tokenizer, self.metadata, resolved,
                                   self.sampling_defaults)
        self.chat = Chat(self.generator, self.model_name)
        self.completions = Completions(self.generator, self.model_name)
        self.load_seconds = time.perf_counter() - t0
        logger.info("engine ready in %.2f s (%s)", self.load_seconds, "compiled" if compiled else "cached library")

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()

    def __del__(self) -> None:
        try:
            self.terminate()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def terminate(self) -> None:
        """Abort in-flight requests, join the engine's threads and free its memory. Idempotent."""
        if self._closed and not self._threads:
            return
        self._closed = True
        if self.generator is not None:
            self.generator.close()
        core = self._core
        if core is not None:
            core.exit_background_loop()  # the core ends every pending request with "abort" first
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
        self._threads = []
        # Anything the core could not deliver: wake the waiters (they end with "abort").
        if self._router is not None:
            self._router.close()
        if core is not None:
            core.unload()
            self._core = None
            if self.generator is not None:
                self.generator.core = None
        if self.generator is not None:  # after the step loop, which may have waited on a mask
            self.generator.close_grammar()

    # ---- requests ---------------------------------------------------------------------------
    def abort(self, request_id: str) -> None:
        """Abort a request; its stream ends with finish_reason "abort"."""
        if self.generator is not None:
            self.generator.abort(request_id)

    def trace(self, clear: bool = False) -> dict[str, Any]:
        """The engine's trace so far as a Chrome trace-event JSON object ({"traceEvents": [...]}:
        json.dump it to a file Perfetto or chrome://tracing opens). Needs enable_tracing=True.
        Events: each request's span from arrival to finish (admitted/preempted instants on it),
        every prefill chunk and decode step with its requests, waits for grammar masks.
        `clear`: start a new trace (events returned here are not returned again)."""
        if self._trace is None:
            raise ConfigError("trace() needs Engine(..., enable_tracing=True)")
        events = json.loads(self._trace.events_json(clear))
        names = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": f"tvmlm {self.model_name}"}},
                 {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "step loop"}}]
        return {"traceEvents": names + events, "displayTimeUnit": "ms",
                "otherData": {"dropped_events": self._trace.dropped}}

    def metrics(self) -> dict[str, Any]:
        """The core's counters (docs/contracts.md section 2: queues, tokens and tokens/s, KV pages,
        prefix cache hits, preemptions, latencies) plus this object's request/error counts."""
        if self._closed:
            raise EngineClosedError("this Engine has been terminated; create a new Engine")
        core = json.loads(self._core.metrics())
        counters = self.generator.counters
        return {**core, "python_requests": counters["requests"], "python_errors": counters["errors"]}

