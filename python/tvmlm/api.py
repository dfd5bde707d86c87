"""The OpenAI-shaped request APIs of an Engine: `engine.chat.completions` and `engine.completions`.

Each `create()` validates the request (protocol.py), turns it into prompt token ids, starts it on
the engine's `generation.Generator`, and shapes the outputs as whole responses or streamed chunks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from . import protocol
from .generation import Generator, Output, Timing
from .protocol_structured import ChoiceDeltaToolCall
from .tool_calls import ToolCallStream, ToolFormat, attach_tool_calls


_UNSET: Any = object()  # a required argument left out: the request's validation says so by name


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not _UNSET}


class _ChatCompletions:
    def __init__(self, generator: Generator, model_name: str):
        self._generator = generator
        self._model_name = model_name

    def create(self, *, messages: list[dict[str, Any]] = _UNSET, stream: bool = False, **kwargs: Any):
        """OpenAI's chat.completions.create: a ChatCompletion, or an iterator of chunks when stream."""
        generator = self._generator
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
        request = generator.start(prompt_ids, req, grammar=grammar)
        outputs, timing = request.outputs(), request.timing
        model = req.model or self._model_name
        if stream:
            return _chat_chunks(outputs, timing, model, req.include_usage, tool_format)
        texts, finishes, prompt_tokens, completion_tokens = _collect(outputs, req.n)
        response = protocol.build_chat_completion(model, texts, finishes, prompt_tokens, completion_tokens,
                                                  usage_extra=timing.usage_extra())
        if tool_format is not None:
            attach_tool_calls(response, tool_format)
        return response


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


def _collect(outputs: Iterator[Output], n: int) -> tuple[list[str], list[str], int, int]:
    """(texts, finish reasons) by choice index, prompt tokens, completion tokens of all choices."""
    parts: list[list[str]] = [[] for _ in range(n)]
    finishes: list[str | None] = [None] * n
    usage = _Usage()
    for out in outputs:
        parts[out.index].append(out.text)
        finishes[out.index] = out.finish_reason or finishes[out.index]
        usage.add(out)
    assert all(f is not None for f in finishes)
    return ["".join(p) for p in parts], finishes, usage.prompt_tokens, usage.completion_tokens


def _chat_chunks(outputs: Iterator[Output], timing: Timing, model: str, include_usage: bool,
                 tool_format: ToolFormat | None = None):
    chunk_id, created = protocol.new_chat_completion_id(), int(time.time())
    started: set[int] = set()  # choices whose first chunk (with the role) went out
    tool_streams: dict[int, ToolCallStream] = {}  # text that may turn into calls is held back
    usage = _Usage()
    try:
        for out in outputs:
            usage.add(out)
            i, text, finish = out.index, out.text, out.finish_reason
            calls = None
            if tool_format is not None:
                held = tool_streams.setdefault(i, ToolCallStream(tool_format))
                text = held.feed(text)
                if finish is not None:
                    text += held.finish()
                    calls = held.calls
                    finish = "tool_calls" if calls and finish == "stop" else finish
            if text or i not in started:
                yield protocol.build_chat_chunk(chunk_id, model, created, content=text,
                                                role=i not in started, index=i)
                started.add(i)
            if calls:
                chunk = protocol.build_chat_chunk(chunk_id, model, created, content=None, index=i)
                chunk.choices[0].delta.tool_calls = [ChoiceDeltaToolCall.of(k, c) for k, c in enumerate(calls)]
                yield chunk
            if finish is not None:
                yield protocol.build_chat_chunk(chunk_id, model, created, content=None,
                                                finish_reason=finish, index=i)
        if include_usage:
            yield protocol.build_chat_usage_chunk(chunk_id, model, created, usage.prompt_tokens,
                                                  usage.completion_tokens, timing.usage_extra())
    finally:
        outputs.close()  # aborts the request when the consumer stops early


class Chat:
    def __init__(self, generator: Generator, model_name: str):
        self.completions = _ChatCompletions(generator, model_name)


class Completions:
    def __init__(self, generator: Generator, model_name: str):
        self._generator = generator
        self._model_name = model_name

    def create(self, *, prompt: str | list[int] = _UNSET, stream: bool = False, **kwargs: Any):
        """OpenAI's completions.create: a Completion, or an iterator of Completion chunks."""
        generator = self._generator
        generator.check_open()
        req = protocol.CompletionRequest.parse(_given(prompt=prompt, stream=stream, **kwargs))
        if isinstance(req.prompt, str):
            prompt_ids = generator.encode(req.prompt, add_special_tokens=True)
        else:
            prompt_ids = list(req.prompt)
        request = generator.start(prompt_ids, req)
        outputs, timing = request.outputs(), request.timing
        model = req.model or self._model_name
        if stream:
            return _completion_chunks(outputs, timing, model, req.include_usage)
        texts, finishes, prompt_tokens, completion_tokens = _collect(outputs, req.n)
        return protocol.build_completion(model, texts, finishes, prompt_tokens, completion_tokens,
                                         usage_extra=timing.usage_extra())


def _completion_chunks(outputs: Iterator[Output], timing: Timing, model: str, include_usage: bool):
    chunk_id, created = protocol.new_completion_id(), int(time.time())
    usage = _Usage()
    try:
        for out in outputs:
            usage.add(out)
            yield protocol.build_completion_chunk(chunk_id, model, created, out.text, out.finish_reason,
                                                  index=out.index)
        if include_usage:
            yield protocol.build_completion_usage_chunk(chunk_id, model, created, usage.prompt_tokens,
                                                        usage.completion_tokens, timing.usage_extra())
    finally:
        outputs.close()
