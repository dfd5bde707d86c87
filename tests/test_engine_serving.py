"""The blocking Engine under load: n > 1 choices, many aborted streams, terminate with requests
in flight, latency extensions in usage."""

from __future__ import annotations

import gc
import random
import threading
import time

import psutil
import pytest

from tvmlm import Engine, EngineConfig

GREEDY = {"temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_package):
    tiny_package("llama-4k")
    e = Engine(tiny_model_dir("llama-4k"), device="cpu",
               engine_config=EngineConfig(max_num_sequence=8, prefix_cache=False))
    yield e
    e.terminate()


def wait_idle(engine, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = engine.metrics()
        if m["running"] == 0 and m["waiting"] == 0:
            return m
        time.sleep(0.02)
    raise AssertionError(f"engine not idle after {timeout} s: {engine.metrics()}")


def test_n_choices(engine):
    from openai.types import Completion
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    one = engine.completions.create(prompt="the lighthouse", max_tokens=8, **GREEDY)
    three = engine.completions.create(prompt="the lighthouse", max_tokens=8, n=3, **GREEDY)
    Completion.model_validate(three.model_dump())
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert all(c.text == one.choices[0].text and c.finish_reason == "length" for c in three.choices)
    assert three.usage.completion_tokens == 24 and three.usage.prompt_tokens == one.usage.prompt_tokens

    messages = [{"role": "user", "content": "Hello there"}]
    chat = engine.chat.completions.create(messages=messages, max_tokens=6, n=2, temperature=1.0, seed=3)
    ChatCompletion.model_validate(chat.model_dump())
    assert [c.index for c in chat.choices] == [0, 1]
    chunks = list(engine.chat.completions.create(messages=messages, max_tokens=6, n=2, temperature=1.0,
                                                 seed=3, stream=True, stream_options={"include_usage": True}))
    for c in chunks:
        ChatCompletionChunk.model_validate(c.model_dump())
    for i in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == "length"
        assert "".join(c.delta.content or "" for c in mine) == chat.choices[i].message.content
    usage = chunks[-1].usage
    assert usage.completion_tokens == chat.usage.completion_tokens == 12
    assert usage.extra["time_to_first_token_s"] > 0 and usage.extra["inter_token_latency_s"] > 0


def test_usage_reports_latency_and_cached_prompt_tokens(tiny_engine):
    system = "You are a lighthouse keeper. " * 20
    kw = dict(max_tokens=4, **GREEDY)
    tiny_engine.chat.completions.create(messages=[{"role": "system", "content": system},
                                                 {"role": "user", "content": "Hi"}], **kw)
    t0 = time.perf_counter()
    r = tiny_engine.chat.completions.create(messages=[{"role": "system", "content": system},
                                                     {"role": "user", "content": "Bye"}], **kw)
    wall = time.perf_counter() - t0
    extra = r.usage.extra
    assert r.usage.prompt_tokens - 24 <= extra["cached_prompt_tokens"] < r.usage.prompt_tokens
    assert extra["time_to_first_token_s"] > 0 and extra["inter_token_latency_s"] > 0
    # the engine's timings fit inside the call that waited for them
    assert extra["time_to_first_token_s"] + (r.usage.completion_tokens - 1) * extra["inter_token_latency_s"] < wall


def test_hundred_streams_half_aborted_leak_nothing(engine):
    rng = random.Random(0)
    rss, threads_after = [], []

    def client(k, jobs, results):
        for prompt, max_tokens, abort_at in jobs:
            stream = engine.completions.create(prompt=prompt, max_tokens=max_tokens, stream=True, **GREEDY)
            last = None
            for i, chunk in enumerate(stream):
                last = chunk
                if abort_at is not None and i == abort_at:
                    if k % 2:
                        stream.close()  # explicit close
                    else:
                        del stream  # dropped: garbage collection closes the generator
                    break
            results.append((abort_at, last.choices[0].finish_reason if last else None))

    for _ in range(5):
        jobs = [(f"request {i} of the round", rng.randint(4, 40), rng.randint(0, 3) if i % 2 else None)
                for i in range(100)]
        results: list = []
        ts = [threading.Thread(target=client, args=(k, jobs[k::10], results)) for k in range(10)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in ts)
        assert len(results) == 100
        assert all(reason == "length" for abort_at, reason in results if abort_at is None)
        gc.collect()
        m = wait_idle(engine)
        assert m["kv_pages_used"] == 0 and m["kv_tokens_used"] == 0
        assert engine._router.open_requests == 0  # every request's inbox was released
        threads_after.append(threading.active_count())
        rss.append(psutil.Process().memory_info().rss)
    assert len(set(threads_after)) == 1
    assert rss[-1] - rss[0] < 32 * 2**20, [r // 2**20 for r in rss]


def test_terminate_with_32_requests_in_flight(tiny_model_dir, tiny_package):
    tiny_package("llama-4k")
    before = threading.active_count()
    engine = Engine(tiny_model_dir("llama-4k"), device="cpu", engine_config=EngineConfig(max_num_sequence=8))
    submitted, started = threading.Semaphore(0), threading.Semaphore(0)
    reasons: list = []

    def consume(i):
        stream = engine.chat.completions.create(
            messages=[{"role": "user", "content": f"tell story {i}"}], max_tokens=3000, stream=True, **GREEDY)
        submitted.release()  # create() queues the request before returning the iterator
        first = True
        finish = None
        for chunk in stream:
            if first:
                started.release()
                first = False
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        reasons.append(finish)

    consumers = [threading.Thread(target=consume, args=(i,)) for i in range(32)]
    for t in consumers:
        t.start()
    for _ in range(32):
        assert submitted.acquire(timeout=60)
    for _ in range(8):  # the first batch is decoding; 24 more wait in the queue
        assert started.acquire(timeout=60)
    core_threads = list(engine._threads)
    t0 = time.monotonic()
    engine.terminate()
    assert time.monotonic() - t0 < 5
    for t in consumers:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in consumers + core_threads)
    assert reasons == ["abort"] * 32
    assert threading.active_count() == before
