"""Tool calls in model output: which format a chat template uses, parsing calls out of generated
text (whole, or streamed), and the structural tag that forces a valid call.

Formats (`ToolFormat.detect` reads the chat template):
  hermes       Qwen2.5 / Hermes: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, any
               number of them, after optional text.
  llama3_json  Llama 3.x: the whole answer is `{"name": ..., "parameters": {...}}` (several are
               separated by ';'), optionally after `<|python_tag|>`.

Content next to calls: a message's content is the text before the first call, trailing whitespace
removed (None when nothing is left); text after the calls is dropped. Streaming holds back what
could still turn into a call, so a stream's content and calls equal the whole response's.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import RequestError
from .protocol_structured import FunctionCall, ToolCall

__all__ = ["ToolFormat", "ToolCallStream", "attach_tool_calls", "parse_tool_calls"]

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(obj: Any, args_key: str) -> ToolCall | None:
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str)):
        return None
    args = obj.get(args_key, obj.get("arguments", {}))
    if not isinstance(args, dict):
        return None
    return ToolCall(id=_new_call_id(),
                    function=FunctionCall(name=obj["name"], arguments=json.dumps(args, ensure_ascii=False)))


@dataclass(frozen=True)
class ToolFormat:
    """A family's tool-call syntax. `xgrammar_model` names xgrammar's builtin structural tag."""

    name: str
    xgrammar_model: str

    @staticmethod
    def detect(chat_template: str | None) -> "ToolFormat":
        """The format the template's model answers with; RequestError when it takes no tools."""
        source = chat_template or ""
        if _HERMES_OPEN in source:
            return HERMES
        if _PYTHON_TAG in source or "ipython" in source:
            return LLAMA3_JSON
        raise RequestError(
            "tools: this model's chat template has no tool-call format tvmlm knows (Qwen2.5/Hermes "
            "<tool_call> JSON or Llama 3.x JSON); call without tools"
        )

    def start(self, text: str) -> tuple[int | None, int]:
        """(where the first call starts or None, how much of `text` is surely plain content)."""
        if self is HERMES:
            idx = text.find(_HERMES_OPEN)
            if idx >= 0:
                return idx, idx
            return None, _safe_prefix(text, _HERMES_OPEN)
        body = text.lstrip()
        lead = len(text) - len(body)
        if body.startswith("{") or body.startswith(_PYTHON_TAG):
            return lead, lead
        if not body or _PYTHON_TAG.startswith(body):
            return None, 0  # undecided: wait for more
        return None, -1  # never a call: -1 marks "plain text for good"

    def parse(self, text: str) -> list[ToolCall] | None:
        """The calls in `text` (which starts at a call), or None if they do not parse."""
        if self is HERMES:
            calls = []
            for m in re.finditer(re.escape(_HERMES_OPEN) + r"(.*?)" + re.escape(_HERMES_CLOSE), text, re.S):
                try:
                    call = _call(json.loads(m.group(1)), "arguments")
                except ValueError:
                    return None
                if call is None:
                    return None
                calls.append(call)
            return calls or None
        body = text.strip()
        if body.startswith(_PYTHON_TAG):
            body = body[len(_PYTHON_TAG):].lstrip()
        decoder, calls, pos = json.JSONDecoder(), [], 0
        while pos < len(body):
            try:
                obj, pos = decoder.raw_decode(body, pos)
            except ValueError:
                return None
            call = _call(obj, "parameters")
            if call is None:
                return None
            calls.append(call)
            while pos < len(body) and (body[pos].isspace() or body[pos] == ";"):
                pos += 1
        return calls or None

    def structural_tag(self, tools: Sequence[Any], parameters: Sequence[Any], tool_choice: Any,
                       parallel: bool) -> str:
        """xgrammar structural tag (JSON) allowing only valid calls: "required" (one or more calls,
        any of `tools`) or a named function (exactly that call). `parameters`: each tool's argument
        schema as the grammar should enforce it (grammar.prepare_json_schema)."""
        import xgrammar as xgr

        tool_dicts = [t.model_dump(exclude_none=True) for t in tools]
        for t, schema in zip(tool_dicts, parameters, strict=True):
            t["function"]["parameters"] = schema
        choice = tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump()
        tag = xgr.get_model_structural_tag(self.xgrammar_model, tools=tool_dicts, tool_choice=choice,
                                           reasoning="disabled", parallel_tool_calls=parallel,
                                           max_whitespace_cnt=1)
        return tag.model_dump_json()


def _safe_prefix(text: str, marker: str) -> int:
    """Length of `text` that cannot be the start of `marker` (a partial marker at the end is held)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return len(text) - k
    return len(text)


HERMES = ToolFormat("hermes", "qwen_3")
LLAMA3_JSON = ToolFormat("llama3_json", "llama")


def parse_tool_calls(fmt: ToolFormat, text: str) -> tuple[str | None, list[ToolCall] | None]:
    """(content, calls) of a whole answer; calls None when it holds none (content is then text)."""
    idx, _ = fmt.start(text)
    if idx is None or idx < 0:
        return text, None
    calls = fmt.parse(text[idx:])
    if calls is None:
        return text, None
    return text[:idx].rstrip() or None, calls


def attach_tool_calls(response: Any, fmt: ToolFormat) -> None:
    """Move the calls in each choice's text of a whole ChatCompletion into message.tool_calls
    (finish_reason "stop" becomes "tool_calls")."""
    for choice in response.choices:
        content, calls = parse_tool_calls(fmt, choice.message.content)
        if calls:
            choice.message.content, choice.message.tool_calls = content, calls
            if choice.finish_reason == "stop":
                choice.finish_reason = "tool_calls"


@dataclass
class ToolCallStream:
    """One streamed choice's text, split into content to send now and calls at the end."""

    fmt: ToolFormat
    text: str = ""
    sent: int = 0
    call_at: int | None = None
    plain: bool = False  # decided: no call can start any more
    calls: list[ToolCall] | None = field(default=None)

    def feed(self, delta: str) -> str:
        """Content that can be sent now (may be "")."""
        self.text += delta
        if self.call_at is not None:
            return ""
        if self.plain:
            return self._send(len(self.text))
        idx, safe = self.fmt.start(self.text)
        if safe < 0:
            self.plain = True
            return self._send(len(self.text))
        if idx is not None:
            self.call_at = idx
            return self._send(len(self.text[:idx].rstrip()))
        # Trailing whitespace waits: if a call follows, it is not content.
        return self._send(len(self.text[:safe].rstrip()))

    def finish(self) -> str:
        """The rest of the content once the choice ended; the parsed calls are in `calls`."""
        if self.call_at is not None:
            self.calls = self.fmt.parse(self.text[self.call_at:])
            if self.calls is not None:
                return ""
        return self._send(len(self.text))

    def _send(self, end: int) -> str:
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:end], end
        return out
