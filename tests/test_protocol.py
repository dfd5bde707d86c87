"""Request validation and OpenAI-compatible response objects."""

from __future__ import annotations

import re

import openai.types as oai
import openai.types.chat as oai_chat
import pytest

from tvmlm.errors import RequestError
from tvmlm.protocol import (ChatCompletionRequest, CompletionRequest, CompletionUsage,
                            build_chat_chunk, build_chat_completion, build_chat_usage_chunk,
                            build_completion, build_completion_chunk, build_completion_usage_chunk,
                            new_chat_completion_id)

USER = [{"role": "user", "content": "Hi"}]


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.parse({"messages": USER, **kw})


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, expected", [
    ({"temperature": 2.5}, ["temperature", "[0, 2]", "2.5"]),
    ({"temperature": -0.1}, ["temperature", "[0, 2]"]),
    ({"temperature": "hot"}, ["temperature", "valid number", "'hot'"]),
    ({"top_p": 0}, ["top_p", "(0, 1]", "got 0"]),
    ({"top_p": 1.5}, ["top_p", "(0, 1]"]),
    ({"top_k": -2}, ["top_k", ">= 0", "-2"]),
    ({"max_tokens": -1}, ["max_tokens", ">= 1"]),
    ({"max_tokens": 0}, ["max_tokens", ">= 1", "got 0"]),
    ({"max_tokens": 1.5}, ["max_tokens", "valid integer"]),
    ({"max_completion_tokens": 0}, ["max_completion_tokens", ">= 1"]),
    ({"max_tokens": 5, "max_completion_tokens": 6}, ["max_tokens", "max_completion_tokens"]),
    ({"n": 129}, ["n", "[1, 128]", "129"]),
    ({"n": 0}, ["n", "[1, 128]"]),
    ({"frequency_penalty": 2.5}, ["frequency_penalty", "[-2, 2]", "2.5"]),
    ({"presence_penalty": -3}, ["presence_penalty", "[-2, 2]"]),
    ({"repetition_penalty": 0}, ["repetition_penalty", "(0, 10]"]),
    ({"min_p": 1.5}, ["min_p", "[0, 1]"]),
    ({"logit_bias": {"5": 101}}, ["logit_bias", "[-100, 100]", "101"]),
    ({"logit_bias": {"x": 1}}, ["logit_bias", "token ids", "'x'"]),
    ({"logit_bias": [1, 2]}, ["logit_bias", "map"]),
    ({"stop_token_ids": [1, -1]}, ["stop_token_ids", "token ids"]),
    ({"logprobs": 1}, ["logprobs", "valid boolean"]),
    ({"top_logprobs": 3}, ["top_logprobs is only allowed", "logprobs=True"]),
    ({"logprobs": True, "top_logprobs": 21}, ["top_logprobs", "[0, 20]"]),
    ({"skip_special_tokens": "no"}, ["skip_special_tokens", "valid boolean"]),
    ({"stop": ["x"] * 17}, ["stop", "at most 16"]),
    ({"stop": ["ok", ""]}, ["stop", "non-empty"]),
    ({"stop": 3}, ["stop", "non-empty string"]),
    ({"stream_options": {"include_usage": True}}, ["stream_options", "stream=True"]),
    ({"stream": True, "stream_options": {"usage": True}}, ["stream_options.usage",
                                                          "not a supported field"]),
    ({"seed": "7"}, ["seed", "valid integer"]),
    ({"stream": "yes"}, ["stream", "valid boolean"]),
    ({"tools": [{"type": "function"}]}, ["tools[0].function", "is required"]),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, ["tools[0].function.name", "'a b'"]),
    ({"tool_choice": "required"}, ["tool_choice='required' needs a non-empty tools list"]),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, ["names function 'g'", "['f']"]),
    ({"response_format": {"type": "xml"}}, ["response_format.type", "'json_schema'", "'xml'"]),
    ({"response_format": {"type": "json_schema"}}, ["json_schema is required"]),
])
def test_chat_request_errors_name_field_and_allowed_values(kw, expected):
    with pytest.raises(RequestError) as info:
        chat(**kw)
    message = str(info.value)
    assert message.startswith("invalid chat completion request: ")
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize("messages, expected", [
    ([], ["messages", "non-empty list"]),
    ("Hi", ["messages", "non-empty list"]),
    ([{"role": "bot", "content": "x"}], ["messages[0].role", "'system'", "'user'", "'assistant'",
                                         "'tool'", "'bot'"]),
    ([{"role": "user"}], ["messages[0]", "content is required"]),
    ([{"role": "tool", "content": "21"}], ["messages[0]", "tool_call_id"]),
    ([{"role": "user", "content": "x", "tool_calls": []}], ["messages[0]", "only allowed in assistant"]),
    ([{"role": "user", "content": 3}], ["messages[0].content", "string or a list", "got 3"]),
    ([USER[0], {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     ["messages[1].content", "only text"]),
    ([{"role": "user", "content": "x", "audio": None}], ["messages[0].audio", "not a supported"]),
])
def test_chat_message_errors(messages, expected):
    with pytest.raises(RequestError) as info:
        ChatCompletionRequest.parse({"messages": messages})
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


def test_missing_messages_and_several_errors_in_one_message():
    with pytest.raises(RequestError, match=r"messages: is required"):
        ChatCompletionRequest.parse({})
    with pytest.raises(RequestError) as info:
        chat(temperature=9, top_p=0)
    assert "temperature" in str(info.value) and "top_p" in str(info.value)


def test_request_error_is_a_value_error_and_direct_construction_raises_it():
    with pytest.raises(ValueError):
        ChatCompletionRequest(messages=USER, temperature=3)
    with pytest.raises(RequestError, match="mapping"):
        ChatCompletionRequest.parse([("messages", USER)])


def test_valid_chat_request_is_normalized():
    r = ChatCompletionRequest.parse({
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "a"},
                                                  {"type": "text", "text": "b"}]}],
        "model": "smollm2", "max_completion_tokens": 7, "stop": "###", "temperature": 0,
        "top_p": 0.9, "top_k": 40, "seed": 1, "stream": True,
        "stream_options": {"include_usage": True}, "frequency_penalty": 0, "ignore_eos": True,
        "logprobs": False, "n": 1, "user": "u1", "min_p": 0.05, "presence_penalty": 0.5,
        "repetition_penalty": 1.1, "logit_bias": {"7": -100, 9: 2.5}, "stop_token_ids": [5, 2],
    })
    assert r.max_tokens == 7 and r.stop == ["###"] and r.include_usage
    assert [m.text for m in r.messages] == ["Be brief.", "a\nb"]
    assert r.messages[1].role == "user"
    assert r.generation_config(100, [2, 3]) == {
        "max_tokens": 7, "temperature": 0.0, "top_p": 0.9, "top_k": 40, "seed": 1,
        "stop_token_ids": [2, 3, 5], "ignore_eos": True, "n": 1, "min_p": 0.05,
        "presence_penalty": 0.5, "frequency_penalty": 0.0, "repetition_penalty": 1.1,
        "logit_bias": [[7, -100.0], [9, 2.5]], "logprobs": False, "top_logprobs": 0,
        "prompt_logprobs": False,
    }


def test_generation_config_defaults():
    r = chat()
    assert r.stop == [] and r.max_tokens is None and not r.include_usage and not r.stream
    assert r.generation_config(50, [2]) == {
        "max_tokens": 50, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": None,
        "stop_token_ids": [2], "ignore_eos": False, "n": 1, "min_p": 0.0,
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
        "logit_bias": [], "logprobs": False, "top_logprobs": 0, "prompt_logprobs": False,
    }
    assert r.skip_special_tokens
    # The model's defaults fill only what the request left unset.
    got = chat(temperature=0.2).generation_config(50, [2], {"temperature": 0.6, "top_p": 0.95})
    assert (got["temperature"], got["top_p"], got["top_k"]) == (0.2, 0.95, 0)
    assert chat(max_tokens=1).generation_config(50, [])["max_tokens"] == 1
    assert chat(top_k=-1).generation_config(50, [])["top_k"] == 0  # vLLM's "off"
    lp = chat(logprobs=True, top_logprobs=3).generation_config(50, [])
    assert (lp["logprobs"], lp["top_logprobs"], lp["prompt_logprobs"]) == (True, 3, False)
    assert chat(logprobs=True).generation_config(50, [])["top_logprobs"] == 0


def test_stream_without_usage():
    assert not chat(stream=True).include_usage
    assert not chat(stream=True, stream_options={"include_usage": False}).include_usage


@pytest.mark.parametrize("kw, expected", [
    ({"prompt": ""}, ["prompt", "non-empty string", "list of token ids"]),
    ({"prompt": []}, ["prompt", "non-empty"]),
    ({"prompt": [1, -2]}, ["prompt", "ints >= 0"]),
    ({"prompt": [1, True]}, ["prompt", "token ids"]),
    ({"prompt": ["a", ""]}, ["prompt", "a batch"]),
    ({"prompt": [[1, 2], []]}, ["prompt", "a batch"]),
    ({"prompt": ["a", [1]]}, ["prompt", "a batch"]),
    ({}, ["prompt", "is required"]),
    ({"prompt": "x", "echo": 1}, ["echo", "valid boolean"]),
    ({"prompt": "x", "logprobs": 6}, ["logprobs", "[0, 5]", "6"]),
    ({"prompt": "x", "logprobs": True}, ["logprobs", "valid integer"]),
    ({"prompt": "x", "max_tokens": 0}, ["max_tokens", ">= 1"]),
    ({"prompt": "x", "best_of": 2}, ["best_of", "not a supported field"]),
    ({"prompt": "x", "n": 0}, ["n", "[1, 128]"]),
    ({"prompt": "x", "temperature": 3}, ["temperature", "[0, 2]"]),
])
def test_completion_request_errors(kw, expected):
    with pytest.raises(RequestError) as info:
        CompletionRequest.parse(kw)
    assert str(info.value).startswith("invalid completion request: ")
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


def test_valid_completion_requests():
    assert CompletionRequest.parse({"prompt": "Once upon"}).prompt == "Once upon"
    r = CompletionRequest.parse({"prompt": [1, 2, 3], "max_tokens": 4, "stop": ["\n"],
                                 "echo": False})
    assert r.prompt == [1, 2, 3] and r.generation_config(9, [0])["max_tokens"] == 4
    assert r.prompts == [[1, 2, 3]]
    assert CompletionRequest.parse({"prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert CompletionRequest.parse({"prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]
    # logprobs=0: the chosen tokens' logprobs, no alternatives (OpenAI); echo adds the prompt's.
    g = CompletionRequest.parse({"prompt": "x", "logprobs": 0, "echo": True}).generation_config(9, [])
    assert (g["logprobs"], g["top_logprobs"], g["prompt_logprobs"]) == (True, 0, True)
    g = CompletionRequest.parse({"prompt": "x", "echo": True}).generation_config(9, [])
    assert (g["logprobs"], g["prompt_logprobs"]) == (False, False)


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

def test_ids_and_created():
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", new_chat_completion_id())
    assert new_chat_completion_id() != new_chat_completion_id()
    c = build_completion("m", "x", "stop", 1, 1)
    assert re.fullmatch(r"cmpl-[0-9a-f]{32}", c.id)
    assert isinstance(c.created, int) and c.created > 1_700_000_000


@pytest.mark.parametrize("finish_reason", ["stop", "length"])
def test_chat_completion_validates_with_openai(finish_reason):
    ours = build_chat_completion("smollm2", "Paris.", finish_reason, prompt_tokens=12,
                                 completion_tokens=3, usage_extra={"decode_tokens_per_s": 80.5})
    theirs = oai_chat.ChatCompletion.model_validate(ours.model_dump())
    for r in (ours, theirs):
        assert r.object == "chat.completion" and r.model == "smollm2"
        assert r.choices[0].message.content == "Paris."
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].finish_reason == finish_reason and r.choices[0].index == 0
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (12, 3,
                                                                                            15)
    assert theirs.id == ours.id and theirs.created == ours.created
    assert theirs.usage.model_extra == {"extra": {"decode_tokens_per_s": 80.5}}


def test_chat_stream_chunks_validate_with_openai():
    cid, created = new_chat_completion_id(), 1_800_000_000
    chunks = [
        build_chat_chunk(cid, "m", created, content="", role=True),
        build_chat_chunk(cid, "m", created, content="Hel"),
        build_chat_chunk(cid, "m", created, content="lo"),
        build_chat_chunk(cid, "m", created, finish_reason="length"),
        build_chat_usage_chunk(cid, "m", created, prompt_tokens=5, completion_tokens=2),
    ]
    parsed = [oai_chat.ChatCompletionChunk.model_validate(c.model_dump()) for c in chunks]
    for c in chunks + parsed:
        assert c.object == "chat.completion.chunk" and c.id == cid and c.created == created
    assert parsed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in parsed[:-1]) == "Hello"
    assert chunks[1].choices[0].delta.content == "Hel" and chunks[1].choices[0].delta.role is None
    assert [c.choices[0].finish_reason for c in parsed[:-1]] == [None, None, None, "length"]
    assert parsed[-1].choices == [] and parsed[-1].usage.total_tokens == 7
    assert all(c.usage is None for c in parsed[:-1])


@pytest.mark.parametrize("finish_reason", ["stop", "length"])
def test_completion_validates_with_openai(finish_reason):
    ours = build_completion("m", " there", finish_reason, prompt_tokens=2, completion_tokens=1)
    theirs = oai.Completion.model_validate(ours.model_dump())
    for r in (ours, theirs):
        assert r.object == "text_completion" and r.choices[0].text == " there"
        assert r.choices[0].finish_reason == finish_reason and r.usage.total_tokens == 3


def test_completion_stream_chunks():
    cid, created = "cmpl-abc", 1_800_000_000
    last = build_completion_chunk(cid, "m", created, "!", finish_reason="stop")
    usage = build_completion_usage_chunk(cid, "m", created, 4, 2, {"ttft_s": 0.01})
    for c in (last, usage):
        assert oai.Completion.model_validate(c.model_dump()).id == cid
    assert usage.choices == [] and usage.usage.extra == {"ttft_s": 0.01}
    # Intermediate chunks carry finish_reason None, which openai's CompletionChoice Literal only
    # takes through its lenient constructor (what its client uses for responses).
    middle = build_completion_chunk(cid, "m", created, "Hi")
    parsed = oai.Completion.model_construct(**middle.model_dump())
    assert parsed.choices[0].text == "Hi" and parsed.choices[0].finish_reason is None


@pytest.mark.parametrize("finish_reason", ["abort", "error"])
def test_abort_and_error_finish_reasons(finish_reason):
    # Kept as-is (not mapped to "stop"); the openai client's lenient constructor reads them.
    ours = build_chat_completion("m", "partial", finish_reason, 3, 1)
    parsed = oai_chat.ChatCompletion.model_construct(**ours.model_dump())
    assert isinstance(parsed.choices[0], oai_chat.chat_completion.Choice)
    assert parsed.choices[0].finish_reason == finish_reason
    assert parsed.choices[0].message.content == "partial"
    chunk = build_chat_chunk("chatcmpl-x", "m", 1, finish_reason=finish_reason)
    assert chunk.choices[0].finish_reason == finish_reason


def test_unknown_finish_reason_is_refused():
    with pytest.raises(ValueError):
        build_chat_completion("m", "x", "cancelled", 1, 1)


def test_usage_total_is_the_sum():
    u = CompletionUsage.of(7, 5)
    assert (u.total_tokens, u.extra) == (12, None)
    assert oai.CompletionUsage.model_validate(u.model_dump()).total_tokens == 12
