"""Every public entry point, walked with malformed inputs: nothing but a `TvmlmError` subclass
(which keeps its builtin base) comes out, it comes before anything is queued or compiled, and the
engine keeps serving. The six inputs of issue 20 are the first cases of their tables.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest

from tvmlm import ConfigError, Engine, EngineConfig, ModelError, RequestError, TvmlmError
from tvmlm.cli import main as cli_main
from tvmlm.errors import ModelFileError
from tvmlm.protocol import ChatCompletionRequest, CompletionRequest
from tvmlm.request_limits import MAX_ITEMS, MAX_TEXT_CHARS

HI = [{"role": "user", "content": "hi"}]

# name -> (kwargs of completions.create, substrings of the RequestError's message)
COMPLETION_CASES = {
    "lone-surrogate-prompt": ({"prompt": "\udcff abc"}, ["prompt", "lone surrogate", "U+DCFF", "refused"]),
    "temperature-nan": ({"prompt": "hi", "temperature": math.nan}, ["temperature", "finite"]),
    "seed-2**70": ({"prompt": "hi", "seed": 2**70}, ["seed", "outside [0, 18446744073709551615]"]),
    "seed-negative": ({"prompt": "hi", "seed": -1}, ["seed", "outside [0,"]),
    "temperature-inf": ({"prompt": "hi", "temperature": math.inf}, ["temperature", "finite"]),
    "top-p-nan": ({"prompt": "hi", "top_p": math.nan}, ["top_p", "finite"]),
    "top-k-2**63": ({"prompt": "hi", "top_k": 2**63}, ["top_k", "outside [-9223372036854775808, 9223372036854775807]"]),
    "max-tokens-0": ({"prompt": "hi", "max_tokens": 0}, ["max_tokens", ">= 1"]),
    "max-tokens-huge": ({"prompt": "hi", "max_tokens": 2**64}, ["max_tokens", "outside"]),
    "prompt-ids-outside-vocab": ({"prompt": [5, 2**40]}, ["outside the vocabulary"]),
    "prompt-ids-negative": ({"prompt": [5, -1]}, ["prompt", "ints >= 0"]),
    "prompt-longer-than-context": ({"prompt": [5] * 600}, ["600 tokens", "context window"]),
    "prompt-text-too-long": ({"prompt": "a" * (MAX_TEXT_CHARS + 1)}, ["prompt", "characters in all"]),
    "stop-with-surrogate": ({"prompt": "hi", "stop": ["ok", "\ud800"]}, ["stop[1]", "lone surrogate"]),
    "stop-too-many": ({"prompt": "hi", "stop": ["x"] * 17}, ["stop", "at most 16"]),
    "n-above-max-num-sequence": ({"prompt": "hi", "n": 9}, ["n=9", "max_num_sequence"]),
    "unknown-field": ({"prompt": "hi", "logit_bias_typo": {}}, ["logit_bias_typo", "not a supported field"]),
    "prompt-missing": ({}, ["prompt", "required"]),
    "stream-as-string": ({"prompt": "hi", "stream": "yes"}, ["stream", "boolean"]),
}
CHAT_CASES = {
    "messages-surrogate": ({"messages": [{"role": "user", "content": "ok \udc80"}]}, ["messages[0].content", "lone surrogate"]),
    "messages-too-many": ({"messages": HI * (MAX_ITEMS + 1)}, ["messages", f"at most {MAX_ITEMS:,}"]),
    "messages-nested-too-deep": ({"messages": [{"role": "user", "content": [[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]}]}, ["nested deeper"]),
    "role-the-template-refuses": ({"messages": [*HI, {"role": "system", "content": "x"}]}, ["chat template refused", "got system"]),
    "messages-empty": ({"messages": []}, ["messages", "non-empty"]),
    "messages-missing": ({}, ["messages", "required"]),
    "content-not-text": ({"messages": [{"role": "user", "content": 5}]}, ["content", "string"]),
    "frequency-penalty-nan": ({"messages": HI, "frequency_penalty": math.nan}, ["frequency_penalty", "finite"]),
}


def _assert_refused_before_core(engine, call, parts):
    errored = engine.metrics()["requests_errored"]
    with pytest.raises(RequestError) as info:
        call()
    assert isinstance(info.value, ValueError)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    assert "in the engine" not in str(info.value)
    assert engine.metrics()["requests_errored"] == errored


@pytest.mark.parametrize("case", list(COMPLETION_CASES))
def test_completion_refused(tiny_engine, case):
    kwargs, parts = COMPLETION_CASES[case]
    _assert_refused_before_core(tiny_engine, lambda: tiny_engine.completions.create(**{"max_tokens": 2, **kwargs}), parts)


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_refused(tiny_engine, case):
    kwargs, parts = CHAT_CASES[case]
    _assert_refused_before_core(tiny_engine, lambda: tiny_engine.chat.completions.create(max_tokens=2, **kwargs), parts)


def test_accepted_edges_run(tiny_engine):
    """The largest seed and text with NULs and astral characters are served."""
    out = tiny_engine.completions.create(prompt="a\0b 🙂", seed=2**64 - 1, temperature=1.0, max_tokens=3)
    again = tiny_engine.completions.create(prompt="a\0b 🙂", seed=2**64 - 1, temperature=1.0, max_tokens=3)
    assert out.usage.completion_tokens == 3 and out.choices[0].text == again.choices[0].text
    stream = tiny_engine.chat.completions.create(messages=HI, stream=True, max_tokens=2)
    assert list(stream)


def test_http_schema_refuses_the_same(tiny_engine):
    """A JSON body parsed with the request models (what a server does) is refused in the same
    words as the Python API's call."""
    body = json.loads('{"prompt": "\\udcff abc", "max_tokens": 2}')  # JSON escapes decode to lone surrogates
    with pytest.raises(RequestError) as from_json:
        CompletionRequest.parse(body)
    with pytest.raises(RequestError) as from_api:
        tiny_engine.completions.create(**body)
    assert str(from_json.value) == str(from_api.value)
    with pytest.raises(RequestError, match="seed"):
        ChatCompletionRequest.parse({"messages": HI, "seed": 2**70})
    for body in (None, [1, 2], "text", {1: "x"}):
        with pytest.raises(RequestError, match="mapping of field names"):
            CompletionRequest.parse(body)


# ---------------------------------------------------------------------------------------------
# The constructor and the CLI


@pytest.fixture
def hf_copy(tiny_model_dir, tmp_path) -> Path:
    d = tmp_path / "hf"
    shutil.copytree(tiny_model_dir("llama"), d)
    return d


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


ENGINE_CASES = {
    "safetensors-cut-to-1000-bytes": (lambda d: _cut(d / "model.safetensors", 1000), ModelFileError, ["model.safetensors", "truncated"]),
    "tokenizer-json-not-json": (lambda d: (d / "tokenizer.json").write_text("[1, 2]"), ModelFileError, ["tokenizer.json", "expected struct Tokenizer"]),
    "config-kv-heads-not-dividing": (lambda d: (d / "config.json").write_text(
        json.dumps({**json.loads((d / "config.json").read_text()), "num_key_value_heads": 3})), ModelFileError, ["num_key_value_heads"]),
}


@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_engine_refuses_bad_model_files(case, hf_copy):
    mutate, cls, parts = ENGINE_CASES[case]
    mutate(hf_copy)
    t0 = time.perf_counter()
    with pytest.raises(cls) as info:
        Engine(hf_copy, device="cpu")
    assert time.perf_counter() - t0 < 30  # refused at the header checks, not after a compile
    for part in parts:
        assert part in str(info.value)


def test_engine_refuses_smollm2_cut_short(smollm2_path, tmp_path):
    cut = tmp_path / "smollm2-5mb.gguf"
    with open(smollm2_path, "rb") as f:
        cut.write_bytes(f.read(5_000_000))
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match=r"tensor '[\w.]+' truncated: needs bytes [\d,]+-[\d,]+, the file has 5,000,000"):
        Engine(cut, device="cpu")
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("kwargs, cls, part", [
    ({"model": 123}, ConfigError, "model=123"),
    ({"model": None}, ConfigError, "model=None"),
    ({"model": ["a"]}, ConfigError, "model=['a']"),
    ({"model": "/nonexistent/model"}, ModelError, "does not exist"),
    ({"model_lib": 5}, ConfigError, "model_lib=5"),
    ({"mode": ["local"]}, ConfigError, "mode"),
    ({"device": 5}, ConfigError, "device"),
    ({"device": "cuda:x"}, ConfigError, "device"),
    ({"engine_config": {"max_num_sequence": 2}}, ConfigError, "engine_config"),
])
def test_engine_constructor_arguments(tiny_model_dir, kwargs, cls, part):
    args = {"model": tiny_model_dir("llama"), "device": "cpu", **kwargs}
    with pytest.raises(cls) as info:
        Engine(**args)
    assert part in str(info.value) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs, part", [
    ({"kv_dtype": ["float16"]}, "kv_dtype"),
    ({"quantization": {}}, "quantization"),
    ({"num_threads": 2**70}, "num_threads"),
    ({"max_total_sequence_length": 2**40}, "max_total_sequence_length"),
    ({"gpu_memory_utilization": math.nan}, "gpu_memory_utilization"),
])
def test_engine_config_arguments(kwargs, part):
    with pytest.raises(ConfigError, match=part):
        EngineConfig(**kwargs)


@pytest.mark.parametrize("argv, part", [
    (["complete", "\udcff abc"], "lone surrogate"),  # undecodable argv bytes arrive as surrogates
    (["complete", "hi", "--temperature", "nan"], "finite"),
    (["complete", "hi", "--seed", str(2**70)], "seed"),
    (["chat", "hi", "--max-tokens", "0"], "max_tokens"),
])
def test_cli_reports_bad_input(tiny_model_dir, tiny_package, capsys, argv, part):
    tiny_package("llama")
    assert cli_main([*argv, "--model", str(tiny_model_dir("llama")), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tvmlm: error: ") and part in err and "Traceback" not in err


def test_cli_bad_model_file(hf_copy, capsys):
    _cut(hf_copy / "model.safetensors", 1000)
    assert cli_main(["complete", "hi", "--model", str(hf_copy), "--device", "cpu"]) == 1
    assert "model.safetensors" in capsys.readouterr().err


def test_errors_are_tvmlm_errors_with_builtin_bases():
    assert all(issubclass(c, TvmlmError) and issubclass(c, ValueError) for c in (ConfigError, ModelError, RequestError, ModelFileError))
