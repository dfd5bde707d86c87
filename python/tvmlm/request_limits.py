"""Checks every request field gets, whatever its name (protocol.py runs them before its own).

`check_values(data)` walks a request's raw arguments once and refuses, naming the field path:
- integers outside the 64-bit range the C++ core parses (`UINT64_FIELDS` such as `seed` take
  [0, 2**64 - 1] instead, passed to the core as the same 64 bits);
- text the tokenizer cannot take: strings with lone surrogates (e.g. "\\udcff" from undecodable
  bytes) are refused, not replaced, so what is generated always answers the text that was sent;
- sizes: at most `MAX_ITEMS` entries per list or object (`MAX_PROMPT_IDS` for a prompt of token
  ids), at most `MAX_TEXT_CHARS` characters in all strings together, nesting at most `MAX_DEPTH`.
Non-finite floats (NaN, inf) are refused by the request models' `allow_inf_nan=False`.
What needs the model (prompt length against the context window, token ids against the
vocabulary, n against the sequences the engine runs) is checked by the engine before queueing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["INT64_MAX", "INT64_MIN", "MAX_DEPTH", "MAX_ITEMS", "MAX_PROMPT_IDS", "MAX_TEXT_CHARS",
           "UINT64_FIELDS", "UINT64_MAX", "check_values", "field_path", "to_int64"]

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
#: Fields that take unsigned 64-bit integers.
UINT64_FIELDS = frozenset({"seed"})
#: Most entries in any list or object of a request (messages, stop strings, logit_bias, ...).
MAX_ITEMS = 4096
#: Most token ids in a prompt given as ids (the context window usually refuses far fewer).
MAX_PROMPT_IDS = 1 << 20
#: Most characters in all of a request's strings together (~1M tokens of text).
MAX_TEXT_CHARS = 4 << 20
#: Deepest nesting of lists/objects.
MAX_DEPTH = 16


def to_int64(value: int) -> int:
    """An unsigned 64-bit value as the signed 64-bit integer with the same bits (what the core's
    JSON parser takes; it casts back to unsigned)."""
    return value - 2**64 if value > INT64_MAX else value


def field_path(parts: tuple | list) -> str:
    """("messages", 0, "role") -> "messages[0].role" ("request" for the request itself)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "request"


def check_values(data: Mapping[str, Any]) -> None:
    """Raise ValueError("<field path>: <problem>") for the first value the module docstring refuses."""
    chars = 0
    stack: list[tuple[tuple, Any]] = [((key,), value) for key, value in data.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            chars += len(value)
            if chars > MAX_TEXT_CHARS:
                raise ValueError(f"{field_path(path[:1])}: the request's text exceeds {MAX_TEXT_CHARS:,} characters in all")
            _check_text(path, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            lo, hi = (0, UINT64_MAX) if len(path) == 1 and path[0] in UINT64_FIELDS else (INT64_MIN, INT64_MAX)
            if not lo <= value <= hi:
                raise ValueError(f"{field_path(path)}: {value} is outside [{lo}, {hi}], the integers the engine takes")
        elif isinstance(value, (list, tuple, Mapping)):
            limit = MAX_PROMPT_IDS if path == ("prompt",) else MAX_ITEMS
            if len(value) > limit:
                raise ValueError(f"{field_path(path)}: has {len(value):,} entries, at most {limit:,} are accepted")
            if len(path) > MAX_DEPTH:
                raise ValueError(f"{field_path(path)}: nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            stack.extend((path + (k,), v) for k, v in items)
        elif hasattr(value, "model_dump"):  # a pydantic object given in place of a dict
            stack.append((path, value.model_dump()))


def _check_text(path: tuple, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field_path(path)}: contains a lone surrogate (U+{ord(text[exc.start]):04X} at character "
            f"{exc.start}), which is not Unicode text and cannot be tokenized; the request is refused, "
            "not repaired: send valid UTF-8"
        ) from None
