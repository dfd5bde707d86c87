"""The blocking `Engine`: an eager constructor over the C++ threaded core (APIs in api.py).

    with Engine("path/to/model", device="auto", mode="local") as engine:
        engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])

Construction does everything that can fail (validate, resolve, compile, tokenizer, threads, KV
cache) so errors surface there, not at the first request. Requests go to the core's queue; the
core's stream-back thread hands their deltas to a `_core.DeltaRouter`, which sorts them into
per-request inboxes in C++ (no GIL, no Python thread hop), where the caller's thread (or iterator)
waits with the GIL released.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol
from .api import Chat, Completions
from .config import MODES, EngineConfig, format_resolved_config, model_kv_dtype, resolve_engine_config
from .detokenizer import ByteLevelDetokenizer, IncrementalDetokenizer, StopStringMatcher
from .devices import Device, available_memory, resolve_device
from .errors import ConfigError, EngineClosedError, ModelError, RequestError, TvmlmError
from .tokenizer import Tokenizer

logger = logging.getLogger("tvmlm")

PACKAGE_FILES = ("lib.so", "params.safetensors", "metadata.json")

# Engines still running when the interpreter exits are terminated by atexit, before finalization:
# left to __del__ during finalization, their threads would return into an interpreter that no
# longer takes them back (pthread_exit inside pybind11's GIL guard: the process aborts).
_live_engines: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _terminate_live_engines() -> None:
    for engine in list(_live_engines):
        engine.terminate()


#: `_Delta.index` of the synthetic delta that ends every unfinished choice (terminate).
ALL_CHOICES = -1


@dataclass
class _Delta:
    """A delta made on the Python side (the abort of every choice on terminate), with the fields of
    the core's `_core.Delta` (what `DeltaInbox.take()` returns)."""

    token_ids: list[int]
    finish_reason: str | None
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    index: int = 0
    cached_prompt_tokens: int = 0
    time_to_first_token: float = 0.0
    inter_token_latency: float = 0.0


@dataclass
class _Output:
    """One step of one choice's output, as text."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    index: int = 0


@dataclass
class _Timing:
    """Per-request latencies for usage.extra, from the core's final delta of each choice (so a
    streaming caller pays nothing per token for them)."""

    first_token_s: float | None = None
    later_tokens: int = 0
    later_seconds: float = 0.0
    cached_prompt_tokens: int = 0

    def saw(self, delta: _Delta) -> None:
        if delta.finish_reason is None:
            return
        self.cached_prompt_tokens = max(self.cached_prompt_tokens, delta.cached_prompt_tokens)
        if delta.time_to_first_token > 0:
            self.first_token_s = min(self.first_token_s or delta.time_to_first_token, delta.time_to_first_token)
        later = delta.completion_tokens - 1
        if later > 0 and delta.inter_token_latency > 0:
            self.later_tokens += later
            self.later_seconds += later * delta.inter_token_latency

    def usage_extra(self) -> dict[str, Any]:
        """time_to_first_token_s (add_request to the first sampled token, the earliest choice),
        inter_token_latency_s (mean gap between later tokens, over all choices),
        cached_prompt_tokens (prefix cache hit)."""
        itl = self.later_seconds / self.later_tokens if self.later_tokens else None
        return {"time_to_first_token_s": self.first_token_s, "inter_token_latency_s": itl,
                "cached_prompt_tokens": self.cached_prompt_tokens}


@dataclass
class _TextStream:
    """Turns a request's token deltas into text deltas, honoring stop strings."""

    detokenizer: IncrementalDetokenizer | ByteLevelDetokenizer
    stops: StopStringMatcher | None
    completion_tokens: int = 0
    prompt_tokens: int = 0

    def feed(self, delta: _Delta) -> tuple[str, str | None]:
        self.prompt_tokens = delta.prompt_tokens or self.prompt_tokens
        self.completion_tokens = delta.completion_tokens or self.completion_tokens + len(delta.token_ids)
        text = self.detokenizer.add(delta.token_ids)
        finish = delta.finish_reason
        if finish is not None:
            text += self.detokenizer.flush()
        if self.stops is not None:
            text = self.stops.feed(text)
            if self.stops.stopped:
                return text, "stop"
            if finish is not None:
                text += self.stops.flush()
                if self.stops.stopped:
                    finish = "stop"
        return text, finish


def _resolve_package(
    model: str | os.PathLike, device: Device, model_lib: str | None, quantization: str | None = None,
    kv_dtype: str | None = None,
) -> tuple[Path, dict, bool]:
    """Return (package dir, metadata, compiled?) for `model`, compiling when needed."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(
            f"model={str(model)!r} does not exist; expected a Hugging Face model directory "
            "(config.json + *.safetensors + tokenizer), a .gguf file, or a compiled tvmlm package"
        )
    compiled_already = path.is_dir() and all((path / f).exists() for f in PACKAGE_FILES)
    if quantization is not None and (compiled_already or model_lib is not None):
        raise ConfigError(
            f"quantization={quantization!r} applies when tvmlm compiles the model, but "
            + ("model_lib was given" if model_lib is not None else f"model={str(model)!r} is already a compiled package")
            + "; leave quantization=None"
        )
    if compiled_already:
        if model_lib is not None:
            raise ConfigError(
                f"model_lib={model_lib!r} was given, but model={str(model)!r} is already a compiled package "
                "with its own lib.so; pass one or the other"
            )
        meta = json.loads((path / "metadata.json").read_text())
        _check_kv_dtype(kv_dtype, meta, f"the compiled package {str(path)!r}")
        from .compile import check_target

        check_target(meta, device.kind, f"model library {str(path / 'lib.so')!r}")
        return path, meta, False

    from . import compile as compiler

    try:
        if model_lib is not None:
            pkg = compiler.package_with_library(path, model_lib, device.kind)
            _check_kv_dtype(kv_dtype, pkg.metadata, f"model_lib={model_lib!r}")
        else:
            # The cache key does not yet tell CUDA architectures apart (needs a compute-capability
            # query in _core); the library is compiled for the GPU the compiling process sees.
            options = compiler.CompileOptions(quantization=quantization, kv_dtype=kv_dtype)
            pkg = compiler.prepare_package(path, device.kind, options=options)
    except (FileNotFoundError, NotImplementedError) as exc:
        raise ModelError(str(exc)) from exc
    except ValueError as exc:
        if isinstance(exc, TvmlmError):
            raise
        raise ModelError(str(exc)) from exc
    return pkg.path, pkg.metadata, pkg.compiled


def _check_kv_dtype(kv_dtype: str | None, meta: dict, library: str) -> None:
    """The KV cache dtype is compiled into the library: a different one cannot be chosen later."""
    if kv_dtype is None:
        return
    compiled = model_kv_dtype(meta)
    if kv_dtype != compiled:
        raise ConfigError(
            f"kv_dtype={kv_dtype!r}, but {library} was compiled with a {compiled} KV cache; "
            f"leave kv_dtype=None or {compiled!r}, or compile from the model's weights"
        )


def _sampling_defaults(package_dir: Path) -> dict[str, Any]:
    """temperature/top_p/top_k from the model's generation_config.json, when it sets them (as vLLM
    does; `do_sample` is ignored, so an unset temperature stays OpenAI's default of 1.0)."""
    try:
        gen = json.loads((package_dir / "generation_config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(gen, dict):
        return {}
    return {k: gen[k] for k in ("temperature", "top_p", "top_k") if isinstance(gen.get(k), (int, float))}


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
    ) -> None:
        self._closed = True  # until fully built: terminate()/__del__ must be safe on a half-made engine
        self._threads: list[threading.Thread] = []
        self._core = None
        self._router = None
        self._counters = {"requests": 0, "errors": 0}
        t0 = time.perf_counter()
        # 1. validate the arguments before touching the disk.
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
        self.package_dir, self.metadata, compiled = _resolve_package(model, self.device, model_lib, quantization, kv_dtype)
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
        self._core.init(str(self.device) if self.device.kind != "cpu" else "cpu:0", self._router, None)
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
                from .errors import OutOfMemoryError

                raise OutOfMemoryError(str(exc)) from exc
            raise
        self.chat = Chat(self)
        self.completions = Completions(self)
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

    # ---- requests ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("this Engine has been terminated; create a new Engine")

    def _submit(self, prompt_ids: list[int], generation: dict[str, Any], stream: bool = True) -> tuple[str, Any]:
        """Validate what the core would reject late, queue the request; (request id, its inbox).
        Without `stream` the inbox delivers each choice whole, when it finishes (one wake-up)."""
        self._check_open()
        context = int(self.metadata["context_window_size"])
        if len(prompt_ids) == 0:
            raise RequestError("the prompt is empty after tokenization; give at least one token")
        if len(prompt_ids) >= context:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens, the model's context window is {context}; "
                "shorten the prompt"
            )
        vocab = int(self.metadata["vocab_size"])
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        limit = min(context, self.config.max_total_sequence_length) - len(prompt_ids)
        if limit <= 0:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens but max_total_sequence_length is "
                f"{self.config.max_total_sequence_length}; shorten the prompt or raise it in EngineConfig"
            )
        generation["max_tokens"] = min(int(generation["max_tokens"]), limit)
        n = int(generation.get("n", 1))
        if n > self.config.max_num_sequence:
            raise RequestError(
                f"n={n} exceeds max_num_sequence ({self.config.max_num_sequence}): the choices are "
                "decoded together; lower n or raise max_num_sequence in EngineConfig"
            )
        request_id = uuid.uuid4().hex
        inbox = self._router.open(request_id, n, stream)  # before the add: no delta can come first
        self._counters["requests"] += 1
        try:
            self._core.add_request(request_id, list(prompt_ids), json.dumps(generation))
        except BaseException:
            self._router.discard(request_id)
            raise
        return request_id, inbox

    def abort(self, request_id: str) -> None:
        """Abort a request; its stream ends with finish_reason "abort"."""
        if not self._closed and self._core is not None:
            self._core.abort_request(request_id)

    def _stream(self, request_id: str, inbox, streams: list[_TextStream],
                timing: _Timing) -> Iterator[_Output]:
        """Yield text outputs of every choice until all have finished; abort the request if the
        consumer stops early. A stop string ends its choice here; the request is aborted in the
        core (freeing its KV) once no choice is left that the core is still running."""
        open_choices = set(range(len(streams)))  # not yet finished for the caller
        core_running = set(open_choices)  # no final delta from the core yet
        try:
            while open_choices:
                # [] once the router closed (terminate) with this request unfinished.
                for delta in inbox.take() or [_Delta([], "abort", index=ALL_CHOICES)]:
                    indices = sorted(core_running) if delta.index == ALL_CHOICES else [delta.index]
                    for index in indices:
                        if delta.finish_reason is not None:
                            core_running.discard(index)
                        if index not in open_choices:
                            continue  # ended by a stop string already
                        if delta.finish_reason == "error":
                            self._counters["errors"] += 1
                            raise RequestError(f"request failed in the engine: {delta.error}")
                        timing.saw(delta)
                        text, finish = streams[index].feed(delta)
                        if finish is not None:
                            open_choices.discard(index)
                        if text or finish is not None:
                            stream = streams[index]
                            yield _Output(text, finish, stream.prompt_tokens, stream.completion_tokens, index)
        finally:
            if core_running:
                self.abort(request_id)

    def _generate(self, prompt_ids: list[int], req: protocol._SamplingRequest) -> tuple[Iterator[_Output], _Timing]:
        generation = req.generation_config(
            default_max_tokens=int(self.metadata["context_window_size"]),
            stop_token_ids=[] if req.ignore_eos else self.tokenizer.eos_token_ids,
            defaults=self.sampling_defaults,
        )
        timing = _Timing()
        # Stop strings are matched here, on text: they need every step, to abort the core in time.
        request_id, inbox = self._submit(prompt_ids, generation, stream=req.stream or bool(req.stop))
        streams = [
            _TextStream(
                self.tokenizer.detokenizer(prompt_ids),
                StopStringMatcher(req.stop) if req.stop else None,
            )
            for _ in range(req.n)
        ]
        return self._stream(request_id, inbox, streams, timing), timing

    def metrics(self) -> dict[str, Any]:
        """The core's counters (docs/contracts.md section 2: queues, tokens and tokens/s, KV pages,
        prefix cache hits, preemptions, latencies) plus this object's request/error counts."""
        self._check_open()
        core = json.loads(self._core.metrics())
        return {**core, "python_requests": self._counters["requests"], "python_errors": self._counters["errors"]}

