"""Render HF chat templates (jinja2) the way transformers' `apply_chat_template` does.

Same environment as transformers: an immutable sandbox (templates come from model repos and are
untrusted), `trim_blocks` + `lstrip_blocks`, the loop-control extension, a no-op `{% generation %}`
block, a `tojson` that does not HTML-escape, and the globals `raise_exception`, `strftime_now`,
`dict` and a `namespace` that refuses underscore attributes.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["render_chat_template", "compile_chat_template", "ChatTemplateError"]

ChatTemplateError = jinja2.exceptions.TemplateError
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; for inference it renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller) -> str:
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False):
    # jinja's built-in tojson HTML-escapes '<', '>', '&' and "'", which would change prompts.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _DictFactory:
    """`dict(...)` / `dict.fromkeys(...)` for templates without exposing the `dict` type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja's `namespace()`, refusing `_`-prefixed attributes (a route to interpreter internals)."""

    def __init__(*args, **kwargs):  # noqa: N805 -- same signature trick as jinja's Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates may not set underscore-prefixed namespace attributes ({name!r})"
            )


@lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_DictFactory(),
        namespace=_Namespace,
    )
    return env.from_string(source)


def _plain(value: Any) -> Any:
    """Deep-copy inputs as plain JSON-like data: templates see no live objects, and the caller's
    messages are never mutated. Pydantic models and dataclasses become dicts."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (str enums, IntEnum, ...) carry extra methods: reduce them to the base type.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    if hasattr(value, "item"):  # numpy scalar
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def render_chat_template(
    source: str,
    messages: Sequence[Any],
    *,
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **kwargs: Any,
) -> str:
    """Render `messages` with the chat template `source`.

    `kwargs` are extra template variables (transformers passes the special tokens, e.g.
    `bos_token`, and things like `enable_thinking`). Messages' keys whose value is None are
    dropped, as transformers does (templates often test `'key' in message`).
    """
    if not messages:
        raise ValueError("cannot apply a chat template to an empty conversation")
    chat = []
    for message in _plain(list(messages)):
        if not isinstance(message, dict):
            raise TypeError(f"chat messages must be dicts (or dataclasses/pydantic models), got {message!r}")
        message = {k: v for k, v in message.items() if v is not None}
        # Reasoning arrives under several names; templates read `reasoning_content` (most) or
        # `thinking` (gpt-oss). Fill both, as transformers does.
        reasoning = next((message[k] for k in _REASONING_KEYS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        chat.append(message)
    return compile_chat_template(source).render(
        messages=chat,
        tools=_plain(tools),
        documents=_plain(documents),
        add_generation_prompt=add_generation_prompt,
        **_plain(kwargs),
    )
