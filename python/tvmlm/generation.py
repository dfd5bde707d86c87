"""Requests to the C++ core and the text that comes back: what every front end shares.

    generator = Generator(core, router, tokenizer, metadata, config, sampling_defaults)
    request = generator.start(prompt_ids, req)   # validate, queue; a `Request`
    for out in request.outputs(): ...             # blocking: one `Output` per text step of a choice
    request.timing.usage_extra()                  # latencies, once the outputs are consumed

`Generator.start` builds the core's generation config from a parsed `protocol` request (the
model's sampling defaults, EOS ids, max_tokens clamped to the context), validates what the core
would reject late, and queues it with an inbox opened on the `_core.DeltaRouter` first. A `Request`
turns the inbox's token deltas into text with `Request.feed` (no waiting, so an async front end
reuses it around its own wait) or `Request.outputs` (the blocking iterator the Engine's APIs use).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import protocol
from .chat_template import ChatTemplateError
from .config import EngineConfig
from .detokenizer import ByteLevelDetokenizer, IncrementalDetokenizer, StopStringMatcher
from .errors import EngineClosedError, RequestError
from .tokenizer import Tokenizer

#: `Delta.index` of the synthetic delta that ends every unfinished choice (terminate).
ALL_CHOICES = -1


@dataclass
class Delta:
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
    logprobs: list | None = None
    prompt_logprobs: list | None = None


@dataclass
class Output:
    """One step of one choice's output, as text; `logprobs` are the core's entries for the tokens
    of this step (`prompt_logprobs`: of the prompt, in the choice's first output)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    index: int = 0
    logprobs: list | None = None
    prompt_logprobs: list | None = None


@dataclass
class Timing:
    """Per-request latencies for usage.extra, from the core's final delta of each choice (so a
    streaming caller pays nothing per token for them)."""

    first_token_s: float | None = None
    later_tokens: int = 0
    later_seconds: float = 0.0
    cached_prompt_tokens: int = 0

    def saw(self, delta: Delta) -> None:
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
class TextStream:
    """Turns a request's token deltas into text deltas, honoring stop strings."""

    detokenizer: IncrementalDetokenizer | ByteLevelDetokenizer
    stops: StopStringMatcher | None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    #: Token ids left out of the text (special tokens, unless skip_special_tokens=False).
    skip: frozenset[int] = frozenset()

    def feed(self, delta: Delta) -> tuple[str, str | None]:
        self.prompt_tokens = delta.prompt_tokens or self.prompt_tokens
        self.completion_tokens = delta.completion_tokens or self.completion_tokens + len(delta.token_ids)
        ids = delta.token_ids
        if self.skip and not self.skip.isdisjoint(ids):
            ids = [t for t in ids if t not in self.skip]
        text = self.detokenizer.add(ids)
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


class Request:
    """One queued request: its inbox, one `TextStream` per choice and its `Timing`.

    A stop string ends its choice here; the request is aborted in the core (freeing its KV) once no
    choice is left that the core is still running (`close`, which `outputs` calls when the consumer
    stops early)."""

    def __init__(self, generator: Generator, request_id: str, inbox, streams: list[TextStream]) -> None:
        self.generator = generator
        self.request_id = request_id
        self.inbox = inbox
        self.streams = streams
        self.timing = Timing()
        self.open_choices = set(range(len(streams)))  # not yet finished for the caller
        self.core_running = set(self.open_choices)  # no final delta from the core yet

    @property
    def finished(self) -> bool:
        return not self.open_choices

    def feed(self, deltas: list) -> list[Output]:
        """The text outputs of a batch of deltas from `inbox.take()`; an empty batch (the router
        closed on terminate with this request unfinished) ends every choice with "abort"."""
        outputs = []
        for delta in deltas or [Delta([], "abort", index=ALL_CHOICES)]:
            indices = sorted(self.core_running) if delta.index == ALL_CHOICES else [delta.index]
            for index in indices:
                if delta.finish_reason is not None:
                    self.core_running.discard(index)
                if index not in self.open_choices:
                    continue  # ended by a stop string already
                if delta.finish_reason == "error":
                    self.generator.counters["errors"] += 1
                    raise RequestError(f"request failed in the engine: {delta.error}")
                self.timing.saw(delta)
                stream = self.streams[index]
                text, finish = stream.feed(delta)
                if finish is not None:
                    self.open_choices.discard(index)
                if text or finish is not None or delta.logprobs or delta.prompt_logprobs:
                    outputs.append(Output(text, finish, stream.prompt_tokens, stream.completion_tokens, index,
                                          delta.logprobs, delta.prompt_logprobs))
        return outputs

    def close(self) -> None:
        """Abort the request in the core if any of its choices still runs there."""
        if self.core_running:
            self.generator.abort(self.request_id)

    def outputs(self) -> Iterator[Output]:
        """Yield text outputs of every choice until all have finished, waiting on the inbox with the
        GIL released; abort the request if the consumer stops early."""
        try:
            while self.open_choices:
                yield from self.feed(self.inbox.take())
        finally:
            self.close()


class Generator:
    """Builds, validates and queues requests on a core (`_core.ThreadedEngine`) whose stream
    callback is `router` (`_core.DeltaRouter`); `counters` counts requests and errors."""

    def __init__(self, core, router, tokenizer: Tokenizer, metadata: dict[str, Any], config: EngineConfig,
                 sampling_defaults: dict[str, Any]) -> None:
        self.core = core
        self.router = router
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.config = config
        self.sampling_defaults = sampling_defaults
        self.counters = {"requests": 0, "errors": 0}
        self.closed = False
        self.grammar = None  # grammar.GrammarBackend, made by the first constrained request
        self._grammar_lock = threading.Lock()
        # Response id -> the core request ids behind it (a completion with a list of prompts).
        self.request_groups: dict[str, list[str]] = {}

    def check_open(self) -> None:
        if self.closed:
            raise EngineClosedError("this Engine has been terminated; create a new Engine")

    def close(self) -> None:
        """No request is queued after this (the owner terminates the core)."""
        self.closed = True

    def generation_config(self, prompt_ids: list[int], req: protocol._SamplingRequest) -> dict[str, Any]:
        """The core's generation config for a parsed request: the model's sampling defaults for the
        fields it leaves unset, its EOS ids unless ignore_eos (submit clamps max_tokens)."""
        return req.generation_config(
            default_max_tokens=int(self.metadata["context_window_size"]),
            stop_token_ids=[] if req.ignore_eos else self.tokenizer.eos_token_ids,
            defaults=self.sampling_defaults,
        )

    def render_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        """The model's chat template applied to `messages`; a template that refuses them (a role
        it does not know, say), or a model without one, is a RequestError."""
        try:
            return self.tokenizer.apply_chat_template(messages, **kwargs)
        except (ChatTemplateError, ValueError, TypeError) as exc:
            raise RequestError(f"invalid chat completion request: messages: the model's chat template refused them: {exc}") from None

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids of prompt text; text the tokenizer refuses is a RequestError (the request
        models refuse lone surrogates first, so this is a backstop)."""
        try:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises TypeError or plain Exception
            raise RequestError(f"the tokenizer refused the prompt text: {exc}") from None

    def check_prompt(self, prompt_ids: list[int], generation: dict[str, Any]) -> None:
        """Validate what the core would reject late; clamp generation["max_tokens"] to the context."""
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
        named = [*generation.get("stop_token_ids", []), *(t for t, _ in generation.get("logit_bias", []))]
        bad = [t for t in named if t >= vocab]
        if bad:
            raise RequestError(
                f"stop_token_ids / logit_bias name token ids {bad[:5]}, outside the vocabulary [0, {vocab})")
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

    def grammar_backend(self):
        """The GrammarBackend (xgrammar is imported by the first constrained request)."""
        with self._grammar_lock:
            if self.grammar is None:
                from .grammar import GrammarBackend

                self.grammar = GrammarBackend(self.tokenizer, int(self.metadata["vocab_size"]),
                                              self.tokenizer.eos_token_ids)
            return self.grammar

    def close_grammar(self) -> None:
        """Join the grammar worker (after the core's loops: the step loop may wait on a mask)."""
        if self.grammar is not None:
            self.grammar.close()

    def submit(self, prompt_ids: list[int], generation: dict[str, Any], stream: bool = True,
               token_masks: list | None = None, notify: bool = False,
               request_id: str | None = None) -> tuple[str, Any]:
        """Validate and queue a request; (request id, its inbox). Without `stream` the inbox
        delivers each choice whole, when it finishes (one wake-up). `token_masks`: one
        `_core.GrammarMask` per choice for a grammar-constrained request. `notify`: the inbox's
        wake-ups also go to the router's ready set (`router.wait_ready()`, for AsyncEngine)."""
        self.check_open()
        self.check_prompt(prompt_ids, generation)
        request_id = request_id or uuid.uuid4().hex
        n = int(generation.get("n", 1))
        inbox = self.router.open(request_id, n, stream, notify)  # before the add: no delta can come first
        self.counters["requests"] += 1
        try:
            self.core.add_request(request_id, list(prompt_ids), json.dumps(generation), token_masks or [])
        except BaseException:
            self.router.discard(request_id)
            raise
        return request_id, inbox

    def start(self, prompt_ids: list[int], req: protocol._SamplingRequest, grammar: Any = None,
              notify: bool = False, request_id: str | None = None) -> Request:
        """Queue a parsed request (under `request_id`, e.g. its response's id); its `Request`
        yields the text of each choice. `grammar` (a grammar.GrammarSpec) constrains every choice;
        `notify`: see submit."""
        masks = None
        if grammar is not None:
            backend = self.grammar_backend()
            masks = backend.masks(backend.compile(grammar), req.n)
        generation = self.generation_config(prompt_ids, req)
        # Stop strings are matched here, on text: they need every step, to abort the core in time.
        request_id, inbox = self.submit(prompt_ids, generation, stream=req.stream or bool(req.stop),
                                        token_masks=masks, notify=notify, request_id=request_id)
        skip = self.tokenizer.special_token_ids if req.skip_special_tokens else frozenset()
        streams = [
            TextStream(self.tokenizer.detokenizer(prompt_ids), StopStringMatcher(req.stop) if req.stop else None,
                       skip=skip)
            for _ in range(req.n)
        ]
        return Request(self, request_id, inbox, streams)

    def abort(self, request_id: str) -> None:
        """Abort a request by the id its response carries (every prompt of a completion batch);
        its stream ends with finish_reason "abort"."""
        if not self.closed and self.core is not None:
            for rid in (request_id, *self.request_groups.get(request_id, ())):
                self.core.abort_request(rid)
