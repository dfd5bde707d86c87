"""OpenAI-shaped responses: `ChatCompletion`, `ChatCompletionChunk`, `Completion` have the field
names and nesting of the `openai` package's types, so
`openai.types.chat.ChatCompletion.model_validate(r.model_dump())` works, and read the same way
(`r.choices[0].message.content`, `chunk.choices[0].delta.content`).

finish_reason is one of "stop", "length", "abort", "error" (docs/contracts.md). The `openai`
package's Literal has no "abort" or "error": its `model_validate` rejects those two, while its
client, which builds response objects with the lenient `construct`, accepts them. So our field
keeps the precise value instead of mapping it to a lie, and only stop/length dumps validate
strictly. Streamed `Completion` chunks carry finish_reason None until the last one, which openai's
`CompletionChoice` (a required Literal) also only accepts through `construct`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Sequence

from pydantic import BaseModel, Field

from .protocol_structured import ChoiceDeltaToolCall, ToolCall

FinishReason = Literal["stop", "length", "abort", "error", "tool_calls"]


def new_chat_completion_id() -> str:
    """A fresh chat completion id: "chatcmpl-<uuid4 hex>"."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def new_completion_id() -> str:
    """A fresh text completion id: "cmpl-<uuid4 hex>"."""
    return f"cmpl-{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


class CompletionUsage(BaseModel):
    """Token counts; `extra` is tvmlm's extension (engine metrics such as timings), or None."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    extra: Optional[dict[str, Any]] = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int,
           extra: Optional[dict[str, Any]] = None) -> "CompletionUsage":
        """Usage with total_tokens = prompt_tokens + completion_tokens."""
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens, extra=extra)


class TopLogprob(BaseModel):
    """An alternative token: its text, UTF-8 bytes and logprob."""

    token: str
    bytes: Optional[list[int]] = None
    logprob: float


class ChatCompletionTokenLogprob(BaseModel):
    """A chosen token's logprob (log-softmax of the distribution it was drawn from) and the most
    likely alternatives, best first."""

    token: str
    bytes: Optional[list[int]] = None
    logprob: float
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """A chat choice's logprobs: one entry per token of its content."""

    content: Optional[list[ChatCompletionTokenLogprob]] = None
    refusal: Optional[list[ChatCompletionTokenLogprob]] = None


class CompletionLogprobs(BaseModel):
    """A text choice's logprobs, OpenAI's legacy layout: parallel lists over the tokens (with
    echo, the prompt's first; the very first token has no logprob: None)."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[Optional[float]] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[Optional[dict[str, float]]] = Field(default_factory=list)


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletion(BaseModel):
    """A whole chat completion (non-streaming response)."""

    id: str = Field(default_factory=new_chat_completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatCompletionChoice]
    usage: Optional[CompletionUsage] = None
    system_fingerprint: Optional[str] = None


class ChoiceDelta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    tool_calls: Optional[list[ChoiceDeltaToolCall]] = None


class ChatCompletionChunkChoice(BaseModel):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: Optional[FinishReason] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionChunk(BaseModel):
    """One streamed piece of a chat completion; the usage chunk has no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Optional[CompletionUsage] = None
    system_fingerprint: Optional[str] = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Optional[FinishReason] = None  # None only in streamed chunks before the last
    logprobs: Optional[CompletionLogprobs] = None


class Completion(BaseModel):
    """A text completion, or (streaming) one chunk of it: OpenAI uses the same object for both."""

    id: str = Field(default_factory=new_completion_id)
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Optional[CompletionUsage] = None
    system_fingerprint: Optional[str] = None


# Builders the engine calls: one per response kind, ids/created defaulted for whole responses and
# passed in for stream chunks (every chunk of a stream shares the first one's id and created).

def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def build_chat_completion(
    model: str, text: str | Sequence[str], finish_reason: FinishReason | Sequence[FinishReason],
    prompt_tokens: int, completion_tokens: int, *, id: str | None = None,
    created: int | None = None, usage_extra: dict | None = None,
    logprobs: Sequence[ChoiceLogprobs | None] | None = None,
) -> ChatCompletion:
    """A finished chat completion and usage: one choice, or one per text when given lists (n > 1;
    `completion_tokens` counts all of them). `logprobs`: one per choice."""
    texts, reasons = _as_list(text), _as_list(finish_reason)
    lps = list(logprobs) if logprobs is not None else [None] * len(texts)
    return ChatCompletion(
        id=id or new_chat_completion_id(), created=created if created is not None else _now(),
        model=model,
        choices=[ChatCompletionChoice(index=i, message=ChatCompletionMessage(content=t),
                                      finish_reason=f, logprobs=lp)
                 for i, (t, f, lp) in enumerate(zip(texts, reasons, lps, strict=True))],
        usage=CompletionUsage.of(prompt_tokens, completion_tokens, usage_extra),
    )


def build_chat_chunk(
    id: str, model: str, created: int, *, content: str | None = None, role: bool = False,
    finish_reason: FinishReason | None = None, index: int = 0,
    logprobs: ChoiceLogprobs | None = None,
) -> ChatCompletionChunk:
    """A content chunk of choice `index`; `role=True` marks a choice's first chunk
    (delta.role = "assistant"). `logprobs` covers the tokens of this chunk."""
    delta = ChoiceDelta(role="assistant" if role else None, content=content)
    return ChatCompletionChunk(
        id=id, created=created, model=model,
        choices=[ChatCompletionChunkChoice(index=index, delta=delta, finish_reason=finish_reason,
                                           logprobs=logprobs)],
    )


def build_chat_usage_chunk(
    id: str, model: str, created: int, prompt_tokens: int, completion_tokens: int,
    usage_extra: dict | None = None,
) -> ChatCompletionChunk:
    """The final chunk of a stream with stream_options.include_usage: usage, no choices."""
    return ChatCompletionChunk(id=id, created=created, model=model, choices=[],
                               usage=CompletionUsage.of(prompt_tokens, completion_tokens,
                                                        usage_extra))


def build_completion(
    model: str, text: str | Sequence[str], finish_reason: FinishReason | Sequence[FinishReason],
    prompt_tokens: int, completion_tokens: int, *, id: str | None = None,
    created: int | None = None, usage_extra: dict | None = None,
    logprobs: Sequence[CompletionLogprobs | None] | None = None,
) -> Completion:
    """A finished text completion and usage: one choice, or one per text when given lists.
    `logprobs`: one per choice."""
    texts, reasons = _as_list(text), _as_list(finish_reason)
    lps = list(logprobs) if logprobs is not None else [None] * len(texts)
    return Completion(
        id=id or new_completion_id(), created=created if created is not None else _now(),
        model=model,
        choices=[CompletionChoice(index=i, text=t, finish_reason=f, logprobs=lp)
                 for i, (t, f, lp) in enumerate(zip(texts, reasons, lps, strict=True))],
        usage=CompletionUsage.of(prompt_tokens, completion_tokens, usage_extra),
    )


def build_completion_chunk(
    id: str, model: str, created: int, text: str, finish_reason: FinishReason | None = None,
    index: int = 0, logprobs: CompletionLogprobs | None = None,
) -> Completion:
    """One streamed piece of choice `index` of a text completion."""
    return Completion(id=id, created=created, model=model,
                      choices=[CompletionChoice(index=index, text=text, finish_reason=finish_reason,
                                                logprobs=logprobs)])


def build_completion_usage_chunk(
    id: str, model: str, created: int, prompt_tokens: int, completion_tokens: int,
    usage_extra: dict | None = None,
) -> Completion:
    """The final usage-only piece of a streamed text completion (include_usage)."""
    return Completion(id=id, created=created, model=model, choices=[],
                      usage=CompletionUsage.of(prompt_tokens, completion_tokens, usage_extra))
