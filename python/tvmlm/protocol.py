"""OpenAI-shaped requests, and the responses they get (protocol_responses.py, re-exported here).

Requests (`ChatCompletionRequest`, `CompletionRequest`) validate the arguments of
`engine.chat.completions.create(...)` / `engine.completions.create(...)`. Any problem raises
`RequestError` whose message names each bad field, what it got and what is allowed; unknown fields
are refused rather than ignored, so an unsupported option never silently changes nothing. The
sampling fields both share are in protocol_sampling.py; `response_format`, `tools` and
`tool_choice` use the types of protocol_structured.py.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Mapping, Optional, Union

from pydantic import StrictBool, StrictInt, StrictStr, field_validator, model_validator

from .protocol_responses import (ChatCompletion, ChatCompletionChoice, ChatCompletionChunk, ChatCompletionChunkChoice,
                                 ChatCompletionMessage, ChatCompletionTokenLogprob, ChoiceDelta, ChoiceLogprobs,
                                 Completion, CompletionChoice, CompletionLogprobs, CompletionUsage, FinishReason,
                                 TopLogprob, build_chat_chunk, build_chat_completion, build_chat_usage_chunk,
                                 build_completion, build_completion_chunk, build_completion_usage_chunk,
                                 new_chat_completion_id, new_completion_id)
from .protocol_sampling import (DEFAULT_SAMPLING, MAX_N, MAX_STOP_STRINGS, MAX_TOKEN_LIST, StreamOptions,
                                _check_range, _SamplingRequest, _Strict)
from .protocol_structured import AssistantToolCall, ResponseFormat, ToolChoice, ToolParam

__all__ = [
    "ChatCompletion", "ChatCompletionChoice", "ChatCompletionChunk", "ChatCompletionChunkChoice", "ChatCompletionMessage",
    "ChatCompletionRequest", "ChatCompletionTokenLogprob", "ChatMessage", "ChoiceDelta", "ChoiceLogprobs", "Completion",
    "CompletionChoice", "CompletionLogprobs", "CompletionRequest", "CompletionUsage", "DEFAULT_SAMPLING", "FinishReason",
    "MAX_COMPLETION_LOGPROBS", "MAX_N", "MAX_STOP_STRINGS", "MAX_TOKEN_LIST", "MAX_TOP_LOGPROBS", "StreamOptions",
    "TextContentPart", "TopLogprob", "build_chat_chunk", "build_chat_completion", "build_chat_usage_chunk",
    "build_completion", "build_completion_chunk", "build_completion_usage_chunk", "new_chat_completion_id",
    "new_completion_id",
]

#: Most alternatives per token: chat `top_logprobs` (OpenAI: 20; the core's kMaxTopLogprobs,
#: _core.MAX_TOP_LOGPROBS, tested equal), completions `logprobs` (5).
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


class TextContentPart(_Strict):
    """A text part of a message's content list: {"type": "text", "text": "..."}."""

    type: Literal["text"]
    text: StrictStr


def _is_text_part(p: Any) -> bool:
    return isinstance(p, TextContentPart) or (
        isinstance(p, Mapping) and set(p) == {"type", "text"}
        and p["type"] == "text" and isinstance(p["text"], str))


class ChatMessage(_Strict):
    """One chat message: role in system/user/assistant/tool, content a string or text parts."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Union[StrictStr, list[TextContentPart], None] = None
    name: Optional[StrictStr] = None
    tool_call_id: Optional[StrictStr] = None
    tool_calls: Optional[list[AssistantToolCall]] = None

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, v: Any) -> Any:
        # One clear message instead of pydantic's per-union-member errors.
        if v is None or isinstance(v, str):
            return v
        if not (isinstance(v, list) and all(_is_text_part(p) for p in v)):
            raise ValueError(
                "must be a string or a list of {'type': 'text', 'text': <str>} parts "
                f"(only text is supported), got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _check_tool_fields(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null or absent only in an assistant "
                             "message with tool_calls)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls is only allowed in assistant messages, not {self.role!r}")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    @property
    def text(self) -> str:
        """The content as one string; text parts are joined with newlines (as vLLM does)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def template_view(self) -> dict[str, Any]:
        """The message as chat templates read it (None fields are dropped by the renderer)."""
        return {"role": self.role, "content": self.text, "name": self.name,
                "tool_call_id": self.tool_call_id,
                "tool_calls": [c.template_view() for c in self.tool_calls] if self.tool_calls else None}


class ChatCompletionRequest(_SamplingRequest):
    """Arguments of `engine.chat.completions.create`.

    `max_completion_tokens` (OpenAI's newer name) is folded into `max_tokens`.
    """

    _kind: ClassVar[str] = "chat completion request"
    messages: list[ChatMessage]
    max_completion_tokens: Optional[StrictInt] = None
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[ToolParam]] = None
    tool_choice: Optional[ToolChoice] = None
    parallel_tool_calls: StrictBool = True
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[StrictInt] = None

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, v: Any) -> Any:
        if not isinstance(v, list) or not v:
            raise ValueError(f"must be a non-empty list of messages, got {v!r}")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: Any) -> Any:
        return _check_range(v, 0, MAX_TOP_LOGPROBS)

    @field_validator("max_completion_tokens")
    @classmethod
    def _max_completion_tokens(cls, v: Any) -> Any:
        return _check_range(v, 1, None)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs is only allowed when logprobs=True")
        return self

    @property
    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _check_tool_choice(self) -> "ChatCompletionRequest":
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError(f"tools: function names must be unique, got {names}")
        choice = self.tool_choice
        if choice is None:
            self.tool_choice = "auto" if names else "none"
        elif choice in ("auto", "required") and not names:
            raise ValueError(f"tool_choice={choice!r} needs a non-empty tools list")
        elif not isinstance(choice, str) and choice.function.name not in names:
            raise ValueError(f"tool_choice names function {choice.function.name!r}, which is not in tools "
                             f"({names})")
        if names and self.tool_choice != "none" and self.response_format not in (None,) \
                and self.response_format.type != "text":
            raise ValueError("response_format and tools cannot be combined unless tool_choice is 'none'")
        return self

    @property
    def tool_choice_mode(self) -> str:
        """"none", "auto", "required" or "named"."""
        choice = self.tool_choice
        return choice if isinstance(choice, str) else "named"

    @model_validator(mode="after")
    def _fold_max_completion_tokens(self) -> "ChatCompletionRequest":
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError(
                    f"max_tokens ({self.max_tokens}) and max_completion_tokens "
                    f"({self.max_completion_tokens}) disagree; set only one"
                )
            self.max_tokens = self.max_completion_tokens
        return self


def _is_token_ids(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)


class CompletionRequest(_SamplingRequest):
    """Arguments of `engine.completions.create`.

    `prompt` is a string, a list of token ids, or a batch: a list of strings or of token-id
    lists (choice `i * n + j` is choice j of prompt i). `logprobs` (0-5) asks for each token's
    logprob and that many alternatives (the chosen token is always among them, so up to
    logprobs + 1, as OpenAI defines it); `echo` puts the prompt before the completion (with its
    logprobs when `logprobs` is set; the first token has none).
    """

    _kind: ClassVar[str] = "completion request"
    prompt: Union[StrictStr, list[StrictInt], list[StrictStr], list[list[StrictInt]]]
    echo: StrictBool = False
    logprobs: Optional[StrictInt] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        one = (isinstance(v, str) and len(v) > 0) or _is_token_ids(v)
        batch = isinstance(v, list) and len(v) > 0 and (
            all(isinstance(p, str) and p for p in v) or all(_is_token_ids(p) for p in v))
        if not (one or batch):
            raise ValueError(
                "must be a non-empty string, a non-empty list of token ids (ints >= 0), or a "
                f"non-empty list of either (a batch), got {v!r}"
            )
        return v

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: Any) -> Any:
        return _check_range(v, 0, MAX_COMPLETION_LOGPROBS)

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts of the batch (one for a single prompt)."""
        p = self.prompt
        return list(p) if isinstance(p, list) and p and not isinstance(p[0], int) else [p]

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs

    @property
    def echo_prompt(self) -> bool:
        return self.echo
