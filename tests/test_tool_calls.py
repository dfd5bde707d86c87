"""tools / tool_choice: templates get the tools, calls are parsed into OpenAI types (whole and
streamed alike), forced calls are grammar-constrained, and a call round-trips through a second turn."""

from __future__ import annotations

import json
import random
from contextlib import contextmanager

import jsonschema
import openai.types.chat as oai
import pytest

from tool_templates import HERMES_TOOL_TEMPLATE, LLAMA3_TOOL_TEMPLATE
from tvmlm import RequestError, protocol
from tvmlm.tool_calls import HERMES, LLAMA3_JSON, ToolCallStream, ToolFormat, parse_tool_calls

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 8},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "local"]}}, "required": ["zone"]}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TEMPLATES = {"hermes": HERMES_TOOL_TEMPLATE, "llama3_json": LLAMA3_TOOL_TEMPLATE}


# ---- parsing (no model) ------------------------------------------------------------------------

PARSE_CASES = [
    (HERMES, 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "Let me check.", [("get_weather", {"city": "Paris"})]),
    (HERMES, '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"x": [1]}}</tool_call>',
     None, [("a", {}), ("b", {"x": [1]})]),
    (HERMES, "<tool_call>{not json}</tool_call>", "<tool_call>{not json}</tool_call>", None),
    (HERMES, "no call here, just <tool text", "no call here, just <tool text", None),
    (LLAMA3_JSON, ' {"name": "get_time", "parameters": {"zone": "utc"}}', None, [("get_time", {"zone": "utc"})]),
    (LLAMA3_JSON, '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"k": 1}}',
     None, [("a", {}), ("b", {"k": 1})]),
    (LLAMA3_JSON, "The answer is {x}", "The answer is {x}", None),
    (LLAMA3_JSON, '{"name": "a", "parameters": {"unterminated": ', '{"name": "a", "parameters": {"unterminated": ', None),
]


@pytest.mark.parametrize("fmt, text, content, calls", PARSE_CASES)
def test_parse_whole_and_streamed_in_random_pieces(fmt, text, content, calls):
    got_content, got_calls = parse_tool_calls(fmt, text)
    assert got_content == content
    assert ([(c.function.name, json.loads(c.function.arguments)) for c in got_calls] if got_calls else None) == calls
    rng = random.Random(0)
    for _ in range(20):  # the same answer streamed in random pieces
        cuts = sorted(rng.sample(range(1, len(text)), k=min(6, len(text) - 1)))
        stream = ToolCallStream(fmt)
        sent = "".join(stream.feed(piece) for piece in (text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])))
        sent += stream.finish()
        assert (sent or None) == content
        assert ([c.function.name for c in stream.calls] if stream.calls else None) == \
            ([name for name, _ in calls] if calls else None)


def test_format_detection():
    assert ToolFormat.detect(HERMES_TOOL_TEMPLATE) is HERMES
    assert ToolFormat.detect(LLAMA3_TOOL_TEMPLATE) is LLAMA3_JSON
    with pytest.raises(RequestError, match="no tool-call format"):
        ToolFormat.detect("{{ messages }}")


# ---- through the engine ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tool_engine(tiny_model_dir):
    """The tiny llama with a 4k window (tool JSON in a prompt is long in its small vocabulary)."""
    from tvmlm import Engine, EngineConfig

    engine = Engine(tiny_model_dir("llama-4k"), device="cpu", engine_config=EngineConfig(max_num_sequence=4))
    yield engine
    engine.terminate()


@contextmanager
def template(engine, source):
    old = engine.tokenizer.chat_template
    engine.tokenizer.chat_template = source
    try:
        yield
    finally:
        engine.tokenizer.chat_template = old


def _create(engine, **kwargs):
    kwargs = {"messages": ASK, "max_tokens": 150, "temperature": 1.0, **kwargs}
    return engine.chat.completions.create(**kwargs)


def _check_calls(message, allowed):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.engine
@pytest.mark.parametrize("fmt", sorted(TEMPLATES))
def test_named_tool_choice_forces_a_valid_call(tool_engine, fmt):
    named = {"type": "function", "function": {"name": "get_weather"}}
    with template(tool_engine, TEMPLATES[fmt]):
        for seed in range(4):
            r = _create(tool_engine, tools=[WEATHER, TIME], tool_choice=named, seed=seed)
            choice = r.choices[0]
            assert choice.finish_reason == "tool_calls"
            _check_calls(choice.message, {"get_weather"})
            assert len(choice.message.tool_calls) == 1
            oai.ChatCompletion.model_validate(r.model_dump())  # the openai package's types


@pytest.mark.engine
def test_required_calls_one_of_the_tools(tool_engine):
    with template(tool_engine, HERMES_TOOL_TEMPLATE):
        for seed in range(6):
            r = _create(tool_engine, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, seed=seed)
            _check_calls(r.choices[0].message, {"get_weather", "get_time"})
            assert len(r.choices[0].message.tool_calls) == 1 and r.choices[0].finish_reason == "tool_calls"


@pytest.mark.engine
@pytest.mark.parametrize("fmt", sorted(TEMPLATES))
def test_streamed_equals_whole(tool_engine, fmt):
    kwargs = dict(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, seed=7)
    with template(tool_engine, TEMPLATES[fmt]):
        whole = _create(tool_engine, **kwargs).choices[0]
        chunks = list(_create(tool_engine, stream=True, **kwargs))
    for chunk in chunks:
        oai.ChatCompletionChunk.model_validate(chunk.model_dump())
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert ("".join(d.content or "" for d in deltas) or None) == whole.message.content
    assert [(c.function.name, c.function.arguments) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert [c.index for c in calls] == list(range(len(calls)))
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "tool_calls"


@pytest.mark.engine
@pytest.mark.parametrize("fmt", sorted(TEMPLATES))
def test_call_round_trips_through_a_second_turn(tool_engine, fmt):
    named = {"type": "function", "function": {"name": "get_weather"}}
    with template(tool_engine, TEMPLATES[fmt]):
        first = _create(tool_engine, tools=[WEATHER], tool_choice=named, seed=1)
        call = first.choices[0].message.tool_calls[0]
        turn = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]
        # What the template receives: the call (arguments as an object) and the tool's answer.
        req = protocol.ChatCompletionRequest.parse({"messages": turn, "tools": [WEATHER]})
        rendered = tool_engine.tokenizer.apply_chat_template([m.template_view() for m in req.messages],
                                                             tools=[WEATHER])
        args_key = "arguments" if fmt == "hermes" else "parameters"
        assert f'"name": "get_weather", "{args_key}": {call.function.arguments}' in rendered
        assert '{"temperature": 21}' in rendered
        second = _create(tool_engine, messages=turn, tools=[WEATHER], seed=2, max_tokens=8)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the whole exchange went in
    assert second.choices[0].finish_reason == "length"


@pytest.mark.engine
def test_tool_choice_none_leaves_tools_out_of_the_prompt(tool_engine):
    with template(tool_engine, HERMES_TOOL_TEMPLATE):
        with_tools = _create(tool_engine, tools=[WEATHER], tool_choice="auto", max_tokens=1)
        without = _create(tool_engine, tools=[WEATHER], tool_choice="none", max_tokens=1)
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens


@pytest.mark.engine
def test_tools_need_a_template_with_a_tool_format(tool_engine):
    with pytest.raises(RequestError, match="no tool-call format"):
        _create(tool_engine, tools=[WEATHER])  # the tiny model's own ChatML template has none
