"""response_format (JSON object / JSON schema) through xgrammar token masks applied in the core."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from tvmlm import RequestError

MESSAGES = [{"role": "user", "content": "Describe a thing as JSON."}]

# Bounded strings, numbers and arrays: random weights sample freely inside the grammar, so every
# output must end within max_tokens.
SCHEMAS = {
    "nested_objects": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 5},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 4},
                               "zip": {"type": "string", "pattern": "^[0-9]{3}$"}},
                "required": ["city", "zip"],
            },
        },
        "required": ["name", "age", "address"],
    },
    "enums_and_arrays": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 3},
            "ok": {"type": "boolean"},
            "size": {"anyOf": [{"type": "null"}, {"enum": [1, 2, 3]}]},
        },
        "required": ["color", "tags", "ok", "size"],
    },
    "array_of_objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99},
                           "kind": {"const": "point"},
                           "xy": {"type": "array", "items": {"enum": [0, 1]}, "minItems": 2, "maxItems": 2}},
            "required": ["id", "kind", "xy"],
        },
        "minItems": 1,
        "maxItems": 2,
    },
}

SEEDS = 50


def _json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}


def _create(engine, **kwargs):
    return engine.chat.completions.create(messages=MESSAGES, max_tokens=150, temperature=1.0, **kwargs)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_outputs_validate_for_50_seeds(tiny_engine, name):
    schema = SCHEMAS[name]
    fmt = _json_schema(schema)
    # Two choices per request (seed, seed + 1), four requests at a time: batches of 8 sequences.
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda s: _create(tiny_engine, seed=s, n=2, response_format=fmt),
                                  range(0, SEEDS, 2)))
    outputs = [c for r in responses for c in r.choices]
    assert len(outputs) == SEEDS
    for choice in outputs:
        assert choice.finish_reason == "stop", choice.message.content  # the grammar ended it
        jsonschema.validate(json.loads(choice.message.content), schema)
    assert len({c.message.content for c in outputs}) > SEEDS // 2  # sampled, not one fixed answer


def test_json_object_is_a_json_object(tiny_engine):
    r = _create(tiny_engine, seed=3, n=2, response_format={"type": "json_object"})
    for choice in r.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:  # a free-form object may outgrow max_tokens; what exists is still an object's start
            assert choice.finish_reason == "length" and choice.message.content.startswith("{")


def test_streamed_equals_whole(tiny_engine):
    fmt = _json_schema(SCHEMAS["enums_and_arrays"])
    whole = _create(tiny_engine, seed=11, response_format=fmt).choices[0]
    chunks = list(_create(tiny_engine, seed=11, response_format=fmt, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "stop"


def test_unconstrained_requests_in_the_same_batch_are_unchanged(tiny_engine):
    """A grammar applies to its own request only: greedy text of a plain request is the same alone
    and next to constrained ones."""
    plain = dict(messages=MESSAGES, max_tokens=24, temperature=0.0)
    alone = tiny_engine.chat.completions.create(**plain).choices[0].message.content
    fmt = _json_schema(SCHEMAS["nested_objects"])
    with ThreadPoolExecutor(3) as pool:
        constrained = [pool.submit(_create, tiny_engine, seed=s, response_format=fmt) for s in (1, 2)]
        beside = pool.submit(tiny_engine.chat.completions.create, **plain)
        assert beside.result().choices[0].message.content == alone
        for f in constrained:
            jsonschema.validate(json.loads(f.result().choices[0].message.content), SCHEMAS["nested_objects"])


def test_matchers_are_released(tiny_engine):
    _create(tiny_engine, seed=5, n=2, response_format=_json_schema(SCHEMAS["array_of_objects"]))
    deadline = time.monotonic() + 5
    while tiny_engine.generator.grammar.pending_matchers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tiny_engine.generator.grammar.pending_matchers == 0


@pytest.mark.parametrize("fmt, words", [
    ({"type": "json_schema"}, "json_schema is required"),
    ({"type": "xml"}, "response_format.type"),
    (_json_schema({"type": "object", "patternProperties": {"^a": {}}}), "'patternProperties' is not supported"),
    (_json_schema({"type": "object", "properties": {"a": {"oneOf": [{}, {}]}}}), "properties.a: the JSON-schema keyword 'oneOf'"),
    (_json_schema({"$ref": "http://example.com/s.json"}), "only local references"),
    (_json_schema({"type": "string", "format": "credit-card"}), "'credit-card' is not supported"),
    (_json_schema({"type": "string", "maxLength": 3, "pattern": "a+"}), "together with pattern"),
])
def test_unsupported_formats_and_schemas_are_refused(tiny_engine, fmt, words):
    with pytest.raises(RequestError, match="response_format") as info:
        _create(tiny_engine, response_format=fmt)
    assert words in str(info.value)


def test_missing_xgrammar_is_a_request_error(monkeypatch):
    """xgrammar is an extra (it needs torch): without it a constrained request says how to get it."""
    import sys

    from tvmlm.grammar import GrammarBackend

    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import xgrammar -> ImportError
    with pytest.raises(RequestError, match=r"tvmlm\[structured\]"):
        GrammarBackend(tokenizer=None, vocab_size=8, stop_token_ids=[])
