"""OpenAI-shaped requests and responses.

Requests (`ChatCompletionRequest`, `CompletionRequest`) validate the arguments of
`engine.chat.completions.create(...)` / `engine.completions.create(...)`. Any problem raises
`RequestError` whose message names each bad field, what it got and what is allowed; unknown fields
are refused rather than ignored, so an unsupported option never silently changes nothing.
`response_format`, `tools` and `tool_choice` use the types of protocol_structured.py.

Responses (`ChatCompletion`, `ChatCompletionChunk`, `Completion`) have the field names and nesting
of the `openai` package's types, so `openai.types.chat.ChatCompletion.model_validate(r.model_dump())`
works, and read the same way (`r.choices[0].message.content`, `chunk.choices[0].delta.content`).

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
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Optional, Sequence, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt,
                      StrictStr, ValidationError, field_validator, model_validator)

# StrictFloat takes ints (temperature=1) but not bools or numeric strings.

from .errors import RequestError
from .protocol_structured import (AssistantToolCall, ChoiceDeltaToolCall, ResponseFormat, ToolCall,
                                  ToolChoice, ToolParam)
from .request_limits import check_values, to_int64

if TYPE_CHECKING:  # typing.Self is Python 3.11+; annotations are strings here (__future__)
    from typing_extensions import Self

FinishReason = Literal["stop", "length", "abort", "error", "tool_calls"]
MAX_STOP_STRINGS = 16
#: Most choices per request (the engine also needs n <= max_num_sequence: they decode together).
MAX_N = 128
#: Sampling values used when neither the request nor the model's generation defaults set one.
DEFAULT_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                    "repetition_penalty": 1.0}
#: Most alternatives per token: chat `top_logprobs` (OpenAI: 20), completions `logprobs` (5).
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
#: Most entries of `logit_bias` and `stop_token_ids`.
MAX_TOKEN_LIST = 1024


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------

def _loc(loc: Sequence[Union[str, int]]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _format_error(err: Mapping[str, Any]) -> str:
    where = _loc(err["loc"]) or "request"
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return f"{where}: is required"
    if kind == "extra_forbidden":
        return f"{where}: is not a supported field"
    if kind == "value_error":  # our own validators: the message already quotes the value
        msg = msg.removeprefix("Value error, ")
        return f"{where}: {msg}" if err["loc"] else msg  # request-wide checks name their field
    return f"{where}: {msg} (got {err.get('input')!r})"


def _request_error(what: str, exc: ValidationError) -> RequestError:
    return RequestError(f"invalid {what}: " + "; ".join(_format_error(e) for e in exc.errors()))


class _Strict(BaseModel):
    """Refuses unknown fields, so an unsupported option is an error instead of a silent no-op,
    and NaN or infinite floats in any field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Request(_Strict):
    """Base of the top-level request models: raises RequestError instead of pydantic's error.

    Only top-level models convert: nested ones (messages, parts) let pydantic collect their
    errors under their path ("messages[0].role").
    """

    _kind: ClassVar[str] = "request"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _request_error(self._kind, exc) from None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Self:
        """Validate a dict of request arguments (e.g. the kwargs of `create`, a JSON body).

        Use this or the constructor; pydantic's `model_validate` skips the RequestError conversion.
        """
        if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
            raise RequestError(f"invalid {cls._kind}: expected a mapping of field names to values, got {data!r:.200}")
        return cls(**dict(data))

    @model_validator(mode="before")
    @classmethod
    def _limits(cls, data: Any) -> Any:
        # Integer ranges, text and sizes for every field, new ones included (request_limits.py).
        if isinstance(data, Mapping):
            check_values(data)
        return data


class TextContentPart(_Strict):
    """A text part of a message's content list: {"type": "text", "text": "..."}."""

    type: Literal["text"]
    text: StrictStr


class StreamOptions(_Strict):
    """`stream_options`: include_usage adds a final chunk with usage and no choices."""

    include_usage: StrictBool = False


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


def _check_range(v: Any, lo: float, hi: float | None, lo_open: bool = False) -> Any:
    if v is None:
        return v
    below = v <= lo if lo_open else v < lo
    if below or (hi is not None and v > hi):
        left = "(" if lo_open else "["
        allowed = f"in {left}{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise ValueError(f"must be {allowed}, got {v!r}")
    return v


class _SamplingRequest(_Request):
    """Fields shared by chat and text completion requests.

    Sampling: temperature, top_p, top_k (0 or -1: off), min_p; presence_penalty and
    frequency_penalty (OpenAI: logit -= presence * [token generated] + frequency * count),
    repetition_penalty (transformers': logits of prompt and output tokens divided by it when
    positive, multiplied when negative); logit_bias {token id: bias in [-100, 100]};
    stop_token_ids; ignore_eos; seed. `skip_special_tokens` (default True) keeps special tokens
    out of the text.
    """

    model: Optional[StrictStr] = None
    max_tokens: Optional[StrictInt] = None
    temperature: Optional[StrictFloat] = None
    top_p: Optional[StrictFloat] = None
    top_k: Optional[StrictInt] = None
    min_p: Optional[StrictFloat] = None
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[StrictInt] = Field(default_factory=list)
    seed: Optional[StrictInt] = None
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    n: StrictInt = 1
    frequency_penalty: Optional[StrictFloat] = None
    presence_penalty: Optional[StrictFloat] = None
    repetition_penalty: Optional[StrictFloat] = None
    logit_bias: Optional[dict[Union[StrictStr, StrictInt], StrictFloat]] = None
    ignore_eos: StrictBool = False
    skip_special_tokens: StrictBool = True
    user: Optional[StrictStr] = None  # accepted for OpenAI compatibility; not used

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: Any) -> Any:
        return _check_range(v, 1, None)

    @field_validator("min_p")
    @classmethod
    def _min_p(cls, v: Any) -> Any:
        return _check_range(v, 0, 1)

    @field_validator("repetition_penalty")
    @classmethod
    def _repetition_penalty(cls, v: Any) -> Any:
        if v is not None and not (0 < v <= 10):
            raise ValueError(f"must be in (0, 10] (1 = off), got {v!r}")
        return v

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, Mapping) or len(v) > MAX_TOKEN_LIST:
            raise ValueError(f"must map at most {MAX_TOKEN_LIST} token ids to biases, got {v!r}")
        out = {}
        for key, bias in v.items():
            token = _token_id(key)
            if (token is None or isinstance(bias, bool) or not isinstance(bias, (int, float))
                    or not -100 <= bias <= 100):
                raise ValueError(
                    "must map token ids (ints >= 0, or their decimal strings) to numbers in "
                    f"[-100, 100], got {key!r}: {bias!r}")
            out[token] = float(bias)
        return out

    @field_validator("stop_token_ids", mode="before")
    @classmethod
    def _stop_token_ids(cls, v: Any) -> Any:
        if v is None:
            return []
        if (not isinstance(v, list) or len(v) > MAX_TOKEN_LIST
                or not all(_token_id(t) is not None and not isinstance(t, str) for t in v)):
            raise ValueError(f"must be a list of at most {MAX_TOKEN_LIST} token ids (ints >= 0), got {v!r}")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: Any) -> Any:
        return _check_range(v, 0, 2)

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: Any) -> Any:
        return _check_range(v, 0, 1, lo_open=True)

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: Any) -> Any:
        if v == -1:  # vLLM's spelling of "off"
            return 0
        return _check_range(v, 0, None)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> list[str]:
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else v
        if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
                or not all(isinstance(s, str) and s for s in stops)):
            raise ValueError(
                f"must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty "
                f"strings, got {v!r}"
            )
        return list(stops)

    @field_validator("n")
    @classmethod
    def _n(cls, v: int) -> int:
        if not 1 <= v <= MAX_N:
            raise ValueError(f"must be in [1, {MAX_N}], got {v}")
        return v

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _penalty(cls, v: Any) -> Any:
        return _check_range(v, -2, 2)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "_SamplingRequest":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream=True")
        return self

    def generation_config(
        self,
        default_max_tokens: int,
        stop_token_ids: Sequence[int],
        defaults: Mapping[str, Any] | None = None,
    ) -> dict:
        """The C++ core's generation config (docs/contracts.md `add_request`) for this request.

        `default_max_tokens` applies when the request sets none (the engine passes what is left
        of the context window); `defaults` (e.g. the model's generation_config.json values for
        temperature/top_p/top_k) fill fields the request left unset, then DEFAULT_SAMPLING.
        Stop *strings* are not in it: they are matched on text in Python (StopStringMatcher).
        """
        base = {**DEFAULT_SAMPLING, **(defaults or {})}

        def pick(name: str) -> Any:
            value = getattr(self, name)
            return value if value is not None else base[name]

        top_logprobs = self.logprob_count
        return {
            "max_tokens": self.max_tokens if self.max_tokens is not None else default_max_tokens,
            "temperature": float(pick("temperature")),
            "top_p": float(pick("top_p")),
            "top_k": int(pick("top_k")),
            "min_p": float(pick("min_p")),
            "presence_penalty": float(self.presence_penalty or 0.0),
            "frequency_penalty": float(self.frequency_penalty or 0.0),
            "repetition_penalty": float(pick("repetition_penalty")),
            "logit_bias": [[t, b] for t, b in (self.logit_bias or {}).items()],
            "seed": None if self.seed is None else to_int64(self.seed),  # same 64 bits
            "stop_token_ids": list(dict.fromkeys([*map(int, stop_token_ids), *self.stop_token_ids])),
            "ignore_eos": self.ignore_eos,
            "n": self.n,
            "logprobs": top_logprobs is not None,
            "top_logprobs": top_logprobs or 0,
            "prompt_logprobs": top_logprobs is not None and self.echo_prompt,
        }

    @property
    def logprob_count(self) -> int | None:
        """Alternatives per token when logprobs are asked for (0: the chosen token's only), else
        None."""
        return None

    @property
    def echo_prompt(self) -> bool:
        """The prompt's text (and logprobs) come first in the output (completions' echo)."""
        return False

    def token_ids_used(self) -> list[int]:
        """Token ids the request names (logit_bias, stop_token_ids), to check against the vocab."""
        return [*(self.logit_bias or {}), *self.stop_token_ids]

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage-only chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def _token_id(v: Any) -> int | None:
    """`v` as a token id (an int >= 0 or its decimal string, as JSON object keys are), else None."""
    if isinstance(v, str) and v.isdecimal():
        v = int(v)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


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


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

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
