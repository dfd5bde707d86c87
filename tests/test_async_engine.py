"""AsyncEngine: the blocking Engine's results through asyncio, an event loop that is never blocked
by the core, and cancellation / early close / terminate that abort requests in the core."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tvmlm import EngineConfig, RequestError
from tvmlm.async_engine import AsyncEngine

GREEDY = {"temperature": 0.0, "ignore_eos": True}
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def aengine(tiny_model_dir, tiny_engine):
    """The tiny llama with tiny_engine's settings (so greedy results can be compared)."""
    engine = AsyncEngine(tiny_model_dir("llama"), device="cpu", engine_config=EngineConfig(max_num_sequence=8))
    yield engine
    engine.terminate()


def idle(engine) -> bool:
    m = engine.metrics()
    return m["running"] == 0 and m["waiting"] == 0 and engine.generator.router.open_requests == 0


async def until_idle(engine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not idle(engine):
        assert time.monotonic() < deadline, engine.metrics()
        await asyncio.sleep(0.01)


def test_results_equal_the_blocking_engine(aengine, tiny_engine):
    from openai.types import Completion
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    want_chat = tiny_engine.chat.completions.create(messages=MESSAGES, max_tokens=10, **GREEDY)
    prompts = [f"the lighthouse keeper {i}" for i in range(6)]
    want = [tiny_engine.completions.create(prompt=p, max_tokens=10, **GREEDY).choices[0].text for p in prompts]

    async def run():
        chat = await aengine.chat.completions.create(messages=MESSAGES, max_tokens=10, **GREEDY)
        stream = await aengine.chat.completions.create(messages=MESSAGES, max_tokens=10, stream=True,
                                                       stream_options={"include_usage": True}, **GREEDY)
        chunks = [c async for c in stream]
        texts = await asyncio.gather(*[aengine.completions.create(prompt=p, max_tokens=10, **GREEDY) for p in prompts])
        return chat, chunks, texts

    chat, chunks, texts = asyncio.run(run())
    ChatCompletion.model_validate(chat.model_dump())
    for c in chunks:
        ChatCompletionChunk.model_validate(c.model_dump())
    assert chat.choices[0].message.content == want_chat.choices[0].message.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want_chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].usage.prompt_tokens == want_chat.usage.prompt_tokens
    for r in texts:
        Completion.model_validate(r.model_dump())
    assert [r.choices[0].text for r in texts] == want


def test_prompt_list_is_one_batch_like_the_blocking_engine(aengine, tiny_engine):
    prompts = ["the lighthouse keeper", "once upon a time", "a computer program"]
    kw = dict(max_tokens=6, n=2, **GREEDY)
    want = tiny_engine.completions.create(prompt=prompts, **kw)

    async def run():
        whole = await aengine.completions.create(prompt=prompts, **kw)
        stream = await aengine.completions.create(prompt=prompts, stream=True, **kw)
        chunks = [c async for c in stream]
        cut = await aengine.completions.create(prompt=prompts, stream=True, max_tokens=3000, ignore_eos=True)
        async for _ in cut:
            break
        await cut.aclose()  # every prompt of the batch is aborted, not just the first
        await until_idle(aengine)
        return whole, chunks

    whole, chunks = asyncio.run(run())
    assert [(c.index, c.text) for c in whole.choices] == [(c.index, c.text) for c in want.choices]
    assert whole.usage.prompt_tokens == want.usage.prompt_tokens and whole.usage.completion_tokens == 36
    streamed = {i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(6)}
    assert streamed == {c.index: c.text for c in want.choices}
    assert not aengine.generator.request_groups


def test_the_event_loop_is_never_blocked(aengine):
    """32 streams at once: a ticker keeps ticking, and one waiter thread serves them all."""
    threads_before = threading.active_count()

    async def run():
        gaps, stop = [], asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        async def consume(i):
            s = await aengine.completions.create(prompt=f"story {i}", max_tokens=64, stream=True, **GREEDY)
            return [c.choices[0].finish_reason async for c in s][-1]

        tick = asyncio.create_task(ticker())
        threads_during = []
        tasks = [asyncio.create_task(consume(i)) for i in range(32)]
        await asyncio.sleep(0.05)
        threads_during.append(threading.active_count())
        reasons = await asyncio.gather(*tasks)
        stop.set()
        await tick
        return reasons, gaps, threads_during

    reasons, gaps, threads_during = asyncio.run(run())
    assert reasons == ["length"] * 32
    assert threads_during == [threads_before]  # no thread per request
    assert len(gaps) > 10 and sorted(gaps)[len(gaps) // 2] < 0.1  # the loop kept running (5 ms ticks)


def test_cancel_close_and_drop_abort_in_the_core(aengine):
    async def run():
        before = aengine.metrics()["generated_tokens"]
        # cancelling the task that awaits a whole response
        task = asyncio.create_task(aengine.completions.create(prompt="long", max_tokens=480, **GREEDY))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # leaving a stream after 3 chunks, closing one never iterated, dropping one
        s = await aengine.chat.completions.create(messages=MESSAGES, max_tokens=480, stream=True, **GREEDY)
        async for i, _ in _enumerate(s):
            if i == 2:
                break
        await s.aclose()
        unread = await aengine.completions.create(prompt="never read", max_tokens=480, stream=True, **GREEDY)
        await unread.aclose()
        dropped = await aengine.completions.create(prompt="dropped", max_tokens=480, stream=True, **GREEDY)
        del dropped
        await until_idle(aengine)
        assert aengine.metrics()["generated_tokens"] - before < 4 * 480
        assert not aengine._ready_events

    asyncio.run(run())


async def _enumerate(stream):
    i = 0
    async for chunk in stream:
        yield i, chunk
        i += 1


def test_bad_requests_raise_like_the_blocking_engine(aengine, tiny_engine):
    async def run():
        with pytest.raises(RequestError) as got:
            await aengine.chat.completions.create(messages=MESSAGES, temperature=3.0)
        return str(got.value)

    with pytest.raises(RequestError) as want:
        tiny_engine.chat.completions.create(messages=MESSAGES, temperature=3.0)
    assert asyncio.run(run()) == str(want.value)


@pytest.mark.engine  # builds an engine on the tiny model (compiles on a cold cache)
def test_terminate_ends_streams_in_flight_and_joins_the_waiter(tiny_model_dir):
    engine = AsyncEngine(tiny_model_dir("llama"), device="cpu", engine_config=EngineConfig(max_num_sequence=4))
    waiter = engine._waiter

    async def run():
        streams = [await engine.completions.create(prompt=f"s {i}", max_tokens=480, stream=True, **GREEDY)
                   for i in range(6)]
        for s in streams[:4]:  # four running, two waiting
            await s.__anext__()
        engine.terminate()
        reasons = []
        for s in streams:
            reasons.append([c.choices[0].finish_reason async for c in s][-1])
        return reasons

    reasons = asyncio.run(run())
    assert set(reasons) <= {"abort", "length"} and "abort" in reasons
    assert not waiter.is_alive()
