"""The OpenAI-shaped request APIs of an Engine: `engine.chat.completions` and `engine.completions`.

Each `create()` validates the request (protocol.py) and turns it into prompt token ids and an
optional grammar (`prepare_chat` / `prepare_completion`), starts it on the engine's
`generation.Generator`, and shapes its outputs with a shaper (`ChatShaper` / `CompletionShaper`:
one output in, the chunks it makes out; or all outputs in, the whole response out). Preparation
and shaping never wait, so `AsyncEngine` (async_engine.py) uses them as they are. The response's
`id` is the id of the request in the engine: `engine.abort(response.id)` (or a chunk's id) stops it
(every prompt of a completion batch).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from . import protocol
from .generation import Generator, Output, Request, Timing
from .logprobs import TokenTexts, chat_logprobs, completion_logprobs, join_completion_logprobs
from .protocol_structured import ChoiceDeltaToolCall
from .tool_calls import ToolCallStream, ToolFormat, attach_tool_calls


_UNSET: Any = object()  # a required argument left out: the request's validation says so by name


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not _UNSET}


class _Usage:
    """Token counts over a request's choices (choice i belongs to prompt i // n), from their latest
    outputs."""

    def __init__(self, n: int = 1) -> None:
        self.n = n
        self.prompts: dict[int, int] = {}
        self.completion: dict[int, int] = {}

    def add(self, out: Output) -> None:
        self.prompts[out.index // self.n] = out.prompt_tokens or self.prompts.get(out.index // self.n, 0)
        self.completion[out.index] = out.completion_tokens

    @property
    def prompt_tokens(self) -> int:
        return sum(self.prompts.values())

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion.values())


class _Shaper:
    """What both shapers share: the response id, creation time, model and usage."""

    new_id: Callable[[], str]

    def __init__(self, model: str, n: int, include_usage: bool, texts: TokenTexts | None = None,
                 choices: int | None = None) -> None:
        self.id, self.created = type(self).new_id(), int(time.time())
        self.model, self.n, self.include_usage = model, n, include_usage
        self.texts = texts  # token texts when logprobs were asked for
        self.choices = choices or n  # n per prompt, over every prompt of a batch
        self._usage = _Usage(n)

    def usage(self, timing: Timing) -> protocol.CompletionUsage:
        """Token counts so far (all of them once the request finished), with the latencies."""
        return protocol.CompletionUsage.of(self._usage.prompt_tokens, self._usage.completion_tokens,
                                           timing.usage_extra())

    def _collect(self, outputs: list[Output]) -> tuple[list[str], list[str], list[list], list[list]]:
        """(texts, finish reasons, logprob entries, prompt logprob entries) by choice index."""
        k = self.choices
        parts: list[list[str]] = [[] for _ in range(k)]
        finishes: list[str | None] = [None] * k
        logprobs: list[list] = [[] for _ in range(k)]
        prompt_logprobs: list[list] = [[] for _ in range(k)]
        for out in outputs:
            parts[out.index].append(out.text)
            finishes[out.index] = out.finish_reason or finishes[out.index]
            logprobs[out.index] += out.logprobs or []
            prompt_logprobs[out.index] += out.prompt_logprobs or []
            self._usage.add(out)
        assert all(f is not None for f in finishes)
        return ["".join(p) for p in parts], finishes, logprobs, prompt_logprobs


class ChatShaper(_Shaper):
    """Outputs -> ChatCompletionChunks (`chunks`, then `end`), or a whole ChatCompletion. With a
    tool format, text that may turn into tool calls is held back and the calls are parsed."""

    new_id = staticmethod(protocol.new_chat_completion_id)

    def __init__(self, model: str, n: int, include_usage: bool, tool_format: ToolFormat | None = None,
                 texts: TokenTexts | None = None) -> None:
        super().__init__(model, n, include_usage, texts)
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
        if text or out.logprobs or i not in self._started:
            lp = chat_logprobs(out.logprobs or [], self.texts) if self.texts else None
            made.append(protocol.build_chat_chunk(self.id, self.model, self.created, content=text,
                                                  role=i not in self._started, index=i, logprobs=lp))
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
        texts, finishes, entries, _ = self._collect(outputs)
        u = self._usage
        logprobs = [chat_logprobs(e, self.texts) for e in entries] if self.texts else None
        response = protocol.build_chat_completion(self.model, texts, finishes, u.prompt_tokens, u.completion_tokens,
                                                  id=self.id, created=self.created,
                                                  usage_extra=timing.usage_extra(), logprobs=logprobs)
        if self.tool_format is not None:
            attach_tool_calls(response, self.tool_format)
        return response


class CompletionShaper(_Shaper):
    """Outputs -> Completion chunks (`chunks`, then `end`), or a whole Completion. Choice i of a
    batch answers prompt i // n; with echo, its text (and logprobs) start with that prompt's."""

    new_id = staticmethod(protocol.new_completion_id)

    def __init__(self, model: str, n: int, include_usage: bool, texts: TokenTexts | None = None,
                 prompts: list[tuple[list[int], str]] | None = None) -> None:
        super().__init__(model, n, include_usage, texts, n * len(prompts or [None]))
        self.prompts = prompts or [([], "")]  # (ids, echoed text) of each prompt
        self._offsets: dict[int, int] = {}  # choice -> text offset of its next token

    def _piece(self, out: Output) -> tuple[str, protocol.CompletionLogprobs | None]:
        """The text and logprobs of one output, the echoed prompt first in a choice's first one."""
        text, head = out.text, None
        ids, echo = self.prompts[out.index // self.n]
        if out.index not in self._offsets:
            text = echo + text
            self._offsets[out.index] = len(echo)
            if self.texts is not None and echo:
                head = completion_logprobs(out.prompt_logprobs or [], self.texts, first_token=ids[0])
        if self.texts is None:
            return text, None
        tail = completion_logprobs(out.logprobs or [], self.texts, text_offset=self._offsets[out.index])
        self._offsets[out.index] += sum(len(t) for t in tail.tokens)
        return text, join_completion_logprobs(head, tail)

    def chunks(self, out: Output) -> list[protocol.Completion]:
        self._usage.add(out)
        text, lp = self._piece(out)
        return [protocol.build_completion_chunk(self.id, self.model, self.created, text, out.finish_reason,
                                                index=out.index, logprobs=lp)]

    def end(self, timing: Timing) -> list[protocol.Completion]:
        if not self.include_usage:
            return []
        u = self._usage
        return [protocol.build_completion_usage_chunk(self.id, self.model, self.created, u.prompt_tokens,
                                                      u.completion_tokens, timing.usage_extra())]

    def whole(self, outputs: list[Output], timing: Timing) -> protocol.Completion:
        pieces: dict[int, list[tuple[str, Any]]] = {}
        for out in outputs:
            pieces.setdefault(out.index, []).append(self._piece(out))
        _, finishes, _, _ = self._collect(outputs)
        texts = ["".join(t for t, _ in pieces.get(i, [])) for i in range(self.choices)]
        logprobs = None
        if self.texts is not None:
            logprobs = [protocol.CompletionLogprobs() for _ in range(self.choices)]
            for i, parts in pieces.items():
                for _, lp in parts:
                    logprobs[i] = join_completion_logprobs(logprobs[i], lp)
        u = self._usage
        return protocol.build_completion(self.model, texts, finishes, u.prompt_tokens, u.completion_tokens,
                                         id=self.id, created=self.created, usage_extra=timing.usage_extra(),
                                         logprobs=logprobs)


@dataclass
class Prepared:
    """A validated request, its prompt token ids, its grammar (or None) and its response's shaper."""

    req: protocol._SamplingRequest
    prompt_ids: list[int]
    shaper: ChatShaper | CompletionShaper
    grammar: Any = None
    #: Every prompt's token ids (a completion batch; else just prompt_ids).
    batch: list[list[int]] | None = None


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
    shaper = ChatShaper(req.model or model_name, req.n, req.include_usage, tool_format,
                        _token_texts(generator) if req.logprobs else None)
    return Prepared(req, prompt_ids, shaper, grammar)


def prepare_completion(generator: Generator, model_name: str, prompt: Any, stream: Any,
                       kwargs: dict[str, Any]) -> Prepared:
    """Validate a text completion request and tokenize its prompt (token ids pass through)."""
    generator.check_open()
    req = protocol.CompletionRequest.parse(_given(prompt=prompt, stream=stream, **kwargs))
    prompts = []
    for p in req.prompts:
        ids = generator.encode(p, add_special_tokens=True) if isinstance(p, str) else list(p)
        generator.check_prompt(ids, generator.generation_config(ids, req))  # all before any is queued
        echo = (p if isinstance(p, str) else generator.tokenizer.decode(ids)) if req.echo else ""
        prompts.append((ids, echo))
    texts = _token_texts(generator) if req.logprobs is not None else None
    shaper = CompletionShaper(req.model or model_name, req.n, req.include_usage, texts, prompts)
    return Prepared(req, prompts[0][0], shaper, batch=[ids for ids, _ in prompts])


def _token_texts(generator: Generator) -> TokenTexts:
    texts = getattr(generator, "token_texts", None)
    if texts is None:
        texts = generator.token_texts = TokenTexts(generator.tokenizer)
    return texts


def start_requests(generator: Generator, prepared: Prepared, notify: bool = False) -> list[Request]:
    """Queue every prompt of a prepared request (one, or a completion batch), all or none.

    A single prompt's request id is the response id; prompt i of a batch is `<response id>-i`, and
    the response id names the group, so `abort(response id)` stops them all."""
    shaper, batch = prepared.shaper, prepared.batch or [prepared.prompt_ids]
    ids = [shaper.id] if len(batch) == 1 else [f"{shaper.id}-{i}" for i in range(len(batch))]
    requests: list[Request] = []
    try:
        for prompt_ids, request_id in zip(batch, ids):
            requests.append(generator.start(prompt_ids, prepared.req, grammar=prepared.grammar,
                                            notify=notify, request_id=request_id))
    except BaseException:
        for queued in requests:
            queued.close()
        raise
    if len(requests) > 1:
        generator.request_groups[shaper.id] = ids
    return requests


def renumber(out: Output, prompt: int, n: int) -> Output:
    """Choice j of prompt i of a batch is the response's choice i * n + j."""
    out.index += prompt * n
    return out


def numbered(outputs: Iterator[Output], prompt: int, n: int) -> Iterator[Output]:
    """Outputs of prompt `prompt` of a batch, their index made the batch's choice index."""
    for out in outputs:
        yield renumber(out, prompt, n)


def _respond(generator: Generator, prepared: Prepared):
    shaper = prepared.shaper
    requests = start_requests(generator, prepared)
    if prepared.req.stream:
        return _stream(generator, requests, shaper)
    try:
        outputs = [out for i, r in enumerate(requests) for out in numbered(r.outputs(), i, shaper.n)]
        return shaper.whole(outputs, requests[0].timing)
    finally:
        generator.request_groups.pop(shaper.id, None)


def _stream(generator: Generator, requests: list[Request], shaper: ChatShaper | CompletionShaper) -> Iterator[Any]:
    streams = [r.outputs() for r in requests]
    try:
        for i, outputs in enumerate(streams):
            for out in numbered(outputs, i, shaper.n):
                yield from shaper.chunks(out)
        yield from shaper.end(requests[0].timing)
    finally:
        for outputs in streams:
            outputs.close()  # aborts the request when the consumer stops early
        generator.request_groups.pop(shaper.id, None)


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

    def create(self, *, prompt: str | list = _UNSET, stream: bool = False, **kwargs: Any):
        """OpenAI's completions.create: a Completion, or an iterator of Completion chunks. A list
        of prompts is one batch: choice i * n + j is choice j of prompt i."""
        return _respond(self._generator, prepare_completion(self._generator, self._model_name, prompt, stream, kwargs))
