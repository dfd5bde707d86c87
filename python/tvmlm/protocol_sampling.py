"""What chat and text completion requests share: strict models that raise RequestError naming
each bad field (`_Request`), and the sampling fields with their ranges (`_SamplingRequest`), which
become the C++ core's generation config. protocol.py defines the two requests on top of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, Sequence, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError,
                      field_validator, model_validator)

# StrictFloat takes ints (temperature=1) but not bools or numeric strings.

from .errors import RequestError
from .request_limits import check_values, field_path, to_int64

if TYPE_CHECKING:  # typing.Self is Python 3.11+; annotations are strings here (__future__)
    from typing_extensions import Self

MAX_STOP_STRINGS = 16
#: Most choices per request (the engine also needs n <= max_num_sequence: they decode together).
MAX_N = 128
#: Sampling values used when neither the request nor the model's generation defaults set one.
DEFAULT_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                    "repetition_penalty": 1.0}
#: Most entries of `logit_bias` and `stop_token_ids`.
MAX_TOKEN_LIST = 1024


def _format_error(err: Mapping[str, Any]) -> str:
    where = field_path(err["loc"])
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


class StreamOptions(_Strict):
    """`stream_options`: include_usage adds a final chunk with usage and no choices."""

    include_usage: StrictBool = False


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

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage-only chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def _token_id(v: Any) -> int | None:
    """`v` as a token id (an int >= 0 or its decimal string, as JSON object keys are), else None."""
    if isinstance(v, str) and v.isdecimal():
        v = int(v)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
