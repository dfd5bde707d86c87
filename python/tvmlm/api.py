"""The OpenAI-shaped request APIs of an Engine: `engine.chat.completions` and `engine.completions`.

Each `create()` validates the request (protocol.py) and turns it into prompt token ids and an
optional grammar (`prepare_chat` / `prepare_completion`), starts it on the engine's
`generation.Generator`, and shapes its outputs with a shaper (`ChatShaper` / `CompletionShaper`:
one output in, the chunks it makes out; or all outputs in, the whole response out). Preparation
and shaping never wait, so `AsyncEngine` (async_engine.py) uses them as they are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from . import protocol
from .generation import Generator, Output, Request, Timing
from .protocol_structured import ChoiceDeltaToolCall
from .tool_calls import ToolCallStream, ToolFormat, attach_tool_calls


_UNSET: Any = object()  # a required argument left out: the request's validation says so by name


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not _UNSET}


class _Usage:
    """Token counts over a request's choices, from their latest outputs."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion: dict[int, int] = {}

    def add(self, out: Output) -> None:
        self.prompt_tokens = out.prompt_tokens or self.prompt_tokens
        self.completion[out.index] = out.completion_tokens

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion.values())


class _Shaper:
    """What both shapers share: the response id, creation time, model and usage."""

    new_id: Callable[[], str]

    def __init__(self, model: str, n: int, include_usage: bool) -> None:
        self.id, self.created = type(self).new_id(), int(time.time())
        self.model, self.n, self.include_usage = model, n, include_usage
        self._usage = _Usage()

    def usage(self, timing: Timing) -> protocol.CompletionUsage:
        """Token counts so far (all of them once the request finished), with the latencies."""
        return protocol.CompletionUsage.of(self._usage.prompt_tokens, self._usage.completion_tokens,
                                           timing.usage_extra())

    def _collect(self, outputs: list[Output]) -> tuple[list[str], list[str]]:
        """(texts, finish reasons) by choice index."""
        parts: list[list[str]] = [[] for _ in range(self.n)]
        finishes: list[str | None] = [None] * self.n
        for out in outputs:
            parts[out.index].append(out.text)
            finishes[out.index] = out.finish_reason or finishes[out.index]
            self._usage.add(out)
        assert all(f is not None for f in finishes)
        return ["".join(p) for p in parts], finishes


class ChatShaper(_Shaper):
    """Outputs -> ChatCompletionChunks (`chunks`, then `end`), or a whole ChatCompletion. With a
    tool format, text that may turn into tool calls is held back and the calls are parsed."""

    new_id = staticmethod(protocol.new_chat_completion_id)

    def __init__(self, model: str, n: int, include_usage: bool, tool_format: ToolFormat | None = None) -> None:
        super().__init__(model, n, include_usage)
        self.tool_format = tool_format
        self._started: set[int] = set()  # choices whose first chunk (with the role) went out
        self._tool_streams: dict[int, ToolCallStream] = {}

    def chunks(self, out: Output) -> list[protocol.ChatCompletionChunk]:
        self._usage.add(out)
        i, text, finish = out.index, out.text, out.finish_reason
        calls, made = None, []
        if self.tool_format is not None:
            held = self._tool_streams.setdefault(i, ToolCallStream(self.tool_format))
            text = held.feed(text)
            if finish is not None:
                text += held.finish()
                calls = held.calls
                finish = "tool_calls" if calls and finish == "stop" else finish
        if text or i not in self._started:
            made.append(protocol.build_chat_chunk(self.id, self.model, self.created, content=text,
                                                  role=i not in self._started, index=i))
            self._started.add(i)
        if calls:
            chunk = protocol.build_chat_chunk(self.id, self.model, self.created, content=None, index=i)
            chunk.choices[0].delta.tool_calls = [ChoiceDeltaToolCall.of(k, c) for k, c in enumerate(calls)]
            made.append(chunk)
        if finish is not None:
            made.append(protocol.build_chat_chunk(self.id, self.model, self.created, content=None,
                                                  finish_reason=finish, index=i))
        return made

    def end(self, timing: Timing) -> list[protocol.ChatCompletionChunk]:
        if not self.include_usage:
            return []
        u = self._usage
        return [protocol.build_chat_usage_chunk(self.id, self.model, self.created, u.prompt_tokens,
                                                u.completion_tokens, timing.usage_extra())]

    def whole(self, outputs: list[Output], timing: Timing) -> protocol.ChatCompletion:
        texts, finishes = self._collect(outputs)
        u = self._usage
        response = protocol.build_chat_completion(self.model, texts, finishes, u.prompt_tokens, u.completion_tokens,
                                                  id=self.id, created=self.created,
                                                  usage_extra=timing.usage_extra())
        if self.tool_format is not None:
            attach_tool_calls(response, self.tool_format)
        return response


class CompletionShaper(_Shaper):
    """Outputs -> Completion chunks (`chunks`, then `end`), or a whole Completion."""

    new_id = staticmethod(protocol.new_completion_id)

    def chunks(self, out: Output) -> list[protocol.Completion]:
        self._usage.add(out)
        return [protocol.build_completion_chunk(self.id, self.model, self.created, out.text, out.finish_reason,
                                                index=out.index)]

    def end(self, timing: Timing) -> list[protocol.Completion]:
        if not self.include_usage:
            return []
        u = self._usage
        return [protocol.build_completion_usage_chunk(self.id, self.model, self.created, u.prompt_tokens,
                                                      u.completion_tokens, timing.usage_extra())]

    def whole(self, outputs: list[Output], timing: Timing) -> protocol.Completion:
        texts, finishes = self._collect(outputs)
        u = self._usage
        return protocol.build_completion(self.model, texts, finishes, u.prompt_tokens, u.completion_tokens,
                                         id=self.id, created=self.created, usage_extra=timing.usage_extra())


@dataclass
class Prepared:
    """A validated request, its prompt token ids, its grammar (or None) and its response's shaper."""

    req: protocol._SamplingRequest
    prompt_ids: list[int]
    shaper: ChatShaper | CompletionShaper
    grammar: Any = None


def prepare_chat(generator: Generator, model_name: str, messages: Any, stream: Any,
                 kwargs: dict[str, Any]) -> Prepared:
    """Validate a chat request, render its messages (and tools) with the chat template."""
    generator.check_open()
    req = protocol.ChatCompletionRequest.parse(_given(messages=messages, stream=stream, **kwargs))
    # Tools reach the template (and calls are parsed) unless tool_choice is "none".
    use_tools = bool(req.tools) and req.tool_choice_mode != "none"
    tool_format = ToolFormat.detect(generator.tokenizer.chat_template) if use_tools else None
    rendered = generator.render_chat(
        [m.template_view() for m in req.messages], add_generation_prompt=True,
        tools=[t.model_dump(exclude_none=True) for t in req.tools] if use_tools else None,
    )
    prompt_ids = generator.encode(rendered, add_special_tokens=False)
    grammar = None
    if req.response_format is not None or tool_format is not None:
        from .grammar import chat_grammar

        grammar = chat_grammar(req, tool_format)
    shaper = ChatShaper(req.model or model_name, req.n, req.include_usage, tool_format)
    return Prepared(req, prompt_ids, shaper, grammar)


def prepare_completion(generator: Generator, model_name: str, prompt: Any, stream: Any,
                       kwargs: dict[str, Any]) -> Prepared:
    """Validate a text completion request and tokenize its prompt (token ids pass through)."""
    generator.check_open()
    req = protocol.CompletionRequest.parse(_given(prompt=prompt, stream=stream, **kwargs))
    if isinstance(req.prompt, str):
        prompt_ids = generator.encode(req.prompt, add_special_tokens=True)
    else:
        prompt_ids = list(req.prompt)
    return Prepared(req, prompt_ids, CompletionShaper(req.model or model_name, req.n, req.include_usage))


def _respond(generator: Generator, prepared: Prepared):
    request = generator.start(prepared.prompt_ids, prepared.req, grammar=prepared.grammar)
    if prepared.req.stream:
        return _stream(request, prepared.shaper)
    return prepared.shaper.whole(list(request.outputs()), request.timing)


def _stream(request: Request, shaper: ChatShaper | CompletionShaper) -> Iterator[Any]:
    outputs = request.outputs()
    try:
        for out in outputs:
            yield from shaper.chunks(out)
        yield from shaper.end(request.timing)
    finally:
        outputs.close()  # aborts the request when the consumer stops early


class _ChatCompletions:
    def __init__(self, generator: Generator, model_name: str):
        self._generator, self._model_name = generator, model_name

    def create(self, *, messages: list[dict[str, Any]] = _UNSET, stream: bool = False, **kwargs: Any):
        """OpenAI's chat.completions.create: a ChatCompletion, or an iterator of chunks when stream."""
        return _respond(self._generator, prepare_chat(self._generator, self._model_name, messages, stream, kwargs))


class Chat:
    def __init__(self, generator: Generator, model_name: str):
        self.completions = _ChatCompletions(generator, model_name)


class Completions:
    def __init__(self, generator: Generator, model_name: str):
        self._generator, self._model_name = generator, model_name

    def create(self, *, prompt: str | list[int] = _UNSET, stream: bool = False, **kwargs: Any):
        """OpenAI's completions.create: a Completion, or an iterator of Completion chunks."""
        return _respond(self._generator, prepare_completion(self._generator, self._model_name, prompt, stream, kwargs))
