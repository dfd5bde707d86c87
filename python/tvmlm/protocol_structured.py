"""The OpenAI request and response types of structured output and tool calling: `response_format`,
`tools`, `tool_choice`, assistant `tool_calls` (requests), `message.tool_calls` and
`delta.tool_calls` (responses). Shapes follow the `openai` package's types; protocol.py uses them.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator, model_validator

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- response_format --------------------------------------------------------------------------

class JSONSchemaSpec(_Strict):
    """`response_format.json_schema`: {"name", "schema", "description"?, "strict"?}."""

    name: StrictStr
    schema_: Union[dict[str, Any], StrictBool] = Field(default=True, alias="schema")
    description: Optional[StrictStr] = None
    strict: Optional[StrictBool] = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(_Strict):
    """{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JSONSchemaSpec] = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema' and only allowed with it")
        return self


# ---- tools ------------------------------------------------------------------------------------

def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"must be 1-64 letters, digits, '_' or '-', got {v!r}")
    return v


class FunctionDefinition(_Strict):
    name: StrictStr
    description: Optional[StrictStr] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[StrictBool] = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)


class ToolParam(_Strict):
    """One entry of `tools`: {"type": "function", "function": {...}}."""

    type: Literal["function"]
    function: FunctionDefinition


class _FunctionName(_Strict):
    name: StrictStr


class NamedToolChoice(_Strict):
    """`tool_choice` naming one function: {"type": "function", "function": {"name": ...}}."""

    type: Literal["function"]
    function: _FunctionName


ToolChoice = Union[Literal["auto", "none", "required"], NamedToolChoice]


class FunctionCall(BaseModel):
    """A call's function: `arguments` is a JSON text, as in OpenAI's API."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """`message.tool_calls[i]` (and an assistant message's tool call in a request)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def template_view(self) -> dict[str, Any]:
        """The call as chat templates read it: arguments parsed into an object when they are JSON
        (templates write `tool_call.arguments | tojson`), as transformers and vLLM pass them."""
        try:
            arguments: Any = json.loads(self.function.arguments)
        except ValueError:
            arguments = self.function.arguments
        return {"id": self.id, "type": "function",
                "function": {"name": self.function.name, "arguments": arguments}}


class AssistantToolCall(_Strict):
    """A tool call in a request's assistant message (what an earlier response returned)."""

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall

    def template_view(self) -> dict[str, Any]:
        return ToolCall(id=self.id, function=self.function).template_view()


class ChoiceDeltaFunctionCall(BaseModel):
    name: Optional[str] = None
    arguments: Optional[str] = None


class ChoiceDeltaToolCall(BaseModel):
    """`delta.tool_calls[i]` of a streamed chunk; tvmlm sends each call whole, in one chunk."""

    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = "function"
    function: Optional[ChoiceDeltaFunctionCall] = None

    @classmethod
    def of(cls, index: int, call: ToolCall) -> "ChoiceDeltaToolCall":
        return cls(index=index, id=call.id,
                   function=ChoiceDeltaFunctionCall(name=call.function.name, arguments=call.function.arguments))
