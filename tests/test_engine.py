"""The blocking Engine: construction errors, request errors, lifecycle, API shapes, concurrency,
and greedy parity with transformers through the whole stack (tokenizer -> C++ core -> detokenizer).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tvmlm
from tvmlm import ConfigError, DeviceError, Engine, EngineClosedError, EngineConfig, ModelError, RequestError

GREEDY = {"temperature": 0.0}


def _hf_greedy(model_dir: Path, prompt_ids: list[int], n: int) -> list[int]:
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            pad_token_id=0, eos_token_id=None,
        )
    return out[0, len(prompt_ids):].tolist()


# ---------------------------------------------------------------------------------------------
# Construction errors: all raised by the constructor, none leaves a thread behind.


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Engine(tmp_path / "nope", device="cpu")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        Engine(tmp_path, device="cpu")


def test_directory_without_weights(tmp_path, tiny_model_dir):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(tiny_model_dir("llama") / "config.json", d / "config.json")
    with pytest.raises(ModelError, match="safetensors"):
        Engine(d, device="cpu")


def test_unsupported_architecture(tmp_path, tiny_model_dir):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir("llama"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="LlamaForCausalLM"):
        Engine(d, device="cpu")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", "", "cpu:-1"])
def test_bad_device_string(device, tiny_model_dir):
    with pytest.raises(ConfigError, match="device"):
        Engine(tiny_model_dir("llama"), device=device)


def test_absent_device(tiny_model_dir):
    from tvmlm import _core

    if _core.device_exists("cuda", 7):
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(DeviceError, match="cuda:7"):
        Engine(tiny_model_dir("llama"), device="cuda:7")


def test_bad_mode(tiny_model_dir):
    with pytest.raises(ConfigError, match="interactive"):
        Engine(tiny_model_dir("llama"), device="cpu", mode="fast")


def test_engine_config_out_of_range(tiny_model_dir, tiny_package):
    with pytest.raises(ConfigError, match="max_num_sequence"):
        EngineConfig(max_num_sequence=0)
    with pytest.raises(ConfigError, match="prefill_chunk_size"):
        EngineConfig(prefill_chunk_size=0)
    tiny_package("llama")
    with pytest.raises(ConfigError, match="max_num_sequence"):
        Engine(tiny_model_dir("llama"), device="cpu", engine_config=EngineConfig(max_num_sequence=100000))
    with pytest.raises(ConfigError, match="engine_config"):
        Engine(tiny_model_dir("llama"), device="cpu", engine_config={"max_num_sequence": 2})


def test_model_lib_missing(tiny_model_dir):
    with pytest.raises(ModelError, match="model_lib"):
        Engine(tiny_model_dir("llama"), device="cpu", model_lib="/nonexistent/lib.so")


def test_model_lib_for_another_model(tiny_model_dir, tiny_package):
    other_lib = tiny_package("qwen3").path / "lib.so"
    with pytest.raises(ModelError, match="another model"):
        Engine(tiny_model_dir("llama"), device="cpu", model_lib=str(other_lib))


def test_model_lib_reused_for_same_shape(tiny_model_dir, tiny_package):
    lib = (tiny_package("llama").path / "lib.so").resolve()
    with Engine(tiny_model_dir("llama"), device="cpu", model_lib=str(lib)) as engine:
        out = engine.completions.create(prompt=[5, 6, 7], max_tokens=4, **GREEDY)
        assert out.usage.completion_tokens == 4


def test_failed_constructor_leaves_nothing(tmp_path, tiny_model_dir, tvmlm_cache_dir):
    """Weights that do not fit the config fail during conversion: no thread, no temp dirs."""
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir("llama"), d)
    tensors = load_file(str(d / "model.safetensors"))
    tensors.pop("model.layers.1.mlp.down_proj.weight")
    save_file(tensors, str(d / "model.safetensors"))
    before = threading.active_count()
    with pytest.raises(ModelError, match="down_proj"):
        Engine(d, device="cpu")
    assert threading.active_count() == before
    leftovers = [p for sub in ("libs", "models") for p in (tvmlm_cache_dir / sub).glob(".*")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------
# Request errors: raised before anything is queued; the engine keeps serving.


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": -0.5}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0.0}, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ],
)
def test_request_errors(tiny_engine, kwargs, field):
    with pytest.raises(RequestError, match=field):
        tiny_engine.chat.completions.create(**kwargs)
    ok = tiny_engine.chat.completions.create(messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_prompt_longer_than_context(tiny_engine):
    context = tiny_engine.metadata["context_window_size"]
    with pytest.raises(RequestError, match="context window"):
        tiny_engine.completions.create(prompt=[5] * (context + 3), max_tokens=1)


def test_prompt_token_outside_vocab(tiny_engine):
    with pytest.raises(RequestError, match="vocabulary"):
        tiny_engine.completions.create(prompt=[5, 10**6], max_tokens=1)


# ---------------------------------------------------------------------------------------------
# API shapes


def test_chat_completion_validates_with_openai(tiny_engine):
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    r = tiny_engine.chat.completions.create(messages=[{"role": "user", "content": "Hello"}], max_tokens=8, **GREEDY)
    ChatCompletion.model_validate(r.model_dump())
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 8 or r.choices[0].finish_reason == "stop"
    chunks = list(
        tiny_engine.chat.completions.create(
            messages=[{"role": "user", "content": "Hello"}], max_tokens=8, stream=True,
            stream_options={"include_usage": True}, **GREEDY,
        )
    )
    for c in chunks:
        ChatCompletionChunk.model_validate(c.model_dump())
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens
    assert len({c.id for c in chunks}) == 1


def test_completion_validates_with_openai(tiny_engine):
    from openai.types import Completion

    r = tiny_engine.completions.create(prompt="hello world", max_tokens=6, **GREEDY)
    Completion.model_validate(r.model_dump())
    assert r.usage.prompt_tokens == len(tiny_engine.tokenizer.encode("hello world"))


def test_streaming_equals_non_streaming(tiny_engine):
    messages = [{"role": "user", "content": "Tell me about the weather"}]
    whole = tiny_engine.chat.completions.create(messages=messages, max_tokens=24, **GREEDY)
    pieces = [
        c.choices[0].delta.content or ""
        for c in tiny_engine.chat.completions.create(messages=messages, max_tokens=24, stream=True, **GREEDY)
        if c.choices
    ]
    assert "".join(pieces) == whole.choices[0].message.content
    text = tiny_engine.completions.create(prompt="the cat", max_tokens=24, **GREEDY).choices[0].text
    streamed = "".join(c.choices[0].text for c in tiny_engine.completions.create(prompt="the cat", max_tokens=24, stream=True, **GREEDY))
    assert streamed == text


def test_stop_string_is_excluded(tiny_engine):
    full = tiny_engine.completions.create(prompt="the cat", max_tokens=24, ignore_eos=True, **GREEDY).choices[0].text
    stop = full[5:8]
    assert stop, "generated text too short for this test"
    generated = tiny_engine.metrics()["generated_tokens"]
    cut = tiny_engine.completions.create(prompt="the cat", max_tokens=24, stop=[stop], ignore_eos=True, **GREEDY)
    assert cut.choices[0].finish_reason == "stop"
    # the core stops soon after the stop string, even when the caller waits for the whole result
    assert tiny_engine.metrics()["generated_tokens"] - generated <= 16
    assert cut.choices[0].text == full[: full.index(stop)]
    streamed = "".join(
        c.choices[0].text
        for c in tiny_engine.completions.create(prompt="the cat", max_tokens=24, stop=[stop], stream=True, ignore_eos=True, **GREEDY)
    )
    assert streamed == cut.choices[0].text


def test_seeded_sampling_reproducible(tiny_engine):
    kw = dict(prompt="once upon", max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)
    a = tiny_engine.completions.create(**kw).choices[0].text
    b = tiny_engine.completions.create(**kw).choices[0].text
    assert a == b


def test_abandoned_stream_is_aborted(tiny_engine):
    stream = tiny_engine.completions.create(prompt="abc", max_tokens=200, stream=True, ignore_eos=True, **GREEDY)
    next(stream)
    stream.close()
    deadline = time.time() + 10
    while time.time() < deadline and tiny_engine.metrics()["running"] + tiny_engine.metrics()["waiting"] > 0:
        time.sleep(0.05)
    assert tiny_engine.metrics()["running"] == 0


def test_concurrent_threads_get_their_own_outputs(tiny_engine):
    """8 threads x 4 requests at once give the same greedy texts as each request alone."""
    prompts = [f"story number {i} about" for i in range(32)]
    alone = {p: tiny_engine.completions.create(prompt=p, max_tokens=12, ignore_eos=True, **GREEDY).choices[0].text for p in prompts}

    def worker(chunk):
        return [(p, tiny_engine.completions.create(prompt=p, max_tokens=12, ignore_eos=True, **GREEDY).choices[0].text) for p in chunk]

    with ThreadPoolExecutor(8) as pool:
        results = [r for rs in pool.map(worker, [prompts[i::8] for i in range(8)]) for r in rs]
    assert len(results) == 32
    for p, text in results:
        assert text == alone[p], p


def test_metrics(tiny_engine):
    m = tiny_engine.metrics()
    for key in ("requests_finished", "prompt_tokens", "generated_tokens", "kv_tokens_used", "kv_tokens_total"):
        assert key in m
    assert m["generated_tokens"] > 0


# ---------------------------------------------------------------------------------------------
# Lifecycle


def test_terminate_joins_threads_and_is_idempotent(tiny_model_dir, tiny_package):
    tiny_package("llama")
    before = threading.active_count()
    engine = Engine(tiny_model_dir("llama"), device="cpu")
    assert threading.active_count() >= before + 2
    engine.completions.create(prompt="x", max_tokens=2)
    engine.terminate()
    assert threading.active_count() == before
    engine.terminate()
    with pytest.raises(EngineClosedError):
        engine.completions.create(prompt="x", max_tokens=2)


def test_terminate_ends_open_streams(tiny_model_dir, tiny_package):
    tiny_package("llama")
    engine = Engine(tiny_model_dir("llama"), device="cpu", engine_config=EngineConfig(max_num_sequence=2))
    streams = [engine.completions.create(prompt=f"p{i}", max_tokens=400, stream=True, ignore_eos=True) for i in range(6)]
    next(streams[0])
    threads = list(engine._threads)
    t0 = time.time()
    engine.terminate()
    assert time.time() - t0 < 5
    assert threads and not any(t.is_alive() for t in threads)
    for s in streams:
        assert list(s)[-1].choices[0].finish_reason == "abort"


def test_context_manager_and_gc(tiny_model_dir, tiny_package):
    import gc

    tiny_package("llama")
    before = threading.active_count()
    with Engine(tiny_model_dir("llama"), device="cpu") as engine:
        engine.completions.create(prompt="x", max_tokens=1)
    assert threading.active_count() == before
    engine = Engine(tiny_model_dir("llama"), device="cpu")
    del engine
    gc.collect()
    assert threading.active_count() == before


@pytest.mark.parametrize("ending", ["return", "raise"])
def test_exit_without_terminate_is_clean(ending, tiny_model_dir, tiny_package, tvmlm_cache_dir):
    """A script that never calls terminate() (or dies of an exception) still exits normally:
    its engine is terminated before the interpreter finalizes, not aborted during it."""
    tiny_package("llama")
    script = (
        "import sys\nfrom tvmlm import Engine\n"
        f"engine = Engine({str(tiny_model_dir('llama'))!r}, device='cpu')\n"
        "stream = engine.completions.create(prompt='x', max_tokens=200, stream=True, ignore_eos=True)\n"
        "next(stream)\n"  # a request still in flight at exit
        + ("raise SystemExit(3)\n" if ending == "raise" else "")
    )
    env = {**os.environ, "TVMLM_CACHE_DIR": str(tvmlm_cache_dir)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == (3 if ending == "raise" else 0), done.stderr[-2000:]
    assert "terminate called" not in done.stderr


# ---------------------------------------------------------------------------------------------
# Greedy parity with transformers through the whole stack


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_engine_greedy_matches_transformers(name, tiny_model_dir, tiny_package):
    tiny_package(name)
    model_dir = tiny_model_dir(name)
    with Engine(model_dir, device="cpu") as engine:
        prompt = engine.tokenizer.encode("the quick brown fox", add_special_tokens=False)
        r = engine.completions.create(prompt=prompt, max_tokens=20, ignore_eos=True, **GREEDY)
        ours = engine.tokenizer.encode(r.choices[0].text, add_special_tokens=False)
        ref = _hf_greedy(model_dir, prompt, 20)
        assert engine.tokenizer.decode(ref) == r.choices[0].text
        assert r.usage.completion_tokens == 20
        del ours


def test_chat_prompt_equals_transformers_template(tiny_engine, tiny_model_dir):
    import transformers as tf

    hf_tok = tf.AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    ours = tiny_engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert ours == hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_version():
    from importlib.metadata import version

    assert tvmlm.__version__ == version("tvmlm")
