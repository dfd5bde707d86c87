"""Engine(enable_tracing=True).trace(): Chrome trace-event JSON of a 4-request run with chunked
prefill and preemption, checked against the trace-event format."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from tvmlm import ConfigError, Engine, EngineConfig

pytestmark = pytest.mark.engine

PHASES = {"X", "B", "E", "i", "I", "b", "e", "n", "M", "C"}


def check_trace_event_format(trace: dict) -> list[dict]:
    """Validate the JSON Object Format of Chrome's trace-event spec; return the events."""
    trace = json.loads(json.dumps(trace))  # plain JSON, no Python-only values
    assert isinstance(trace["traceEvents"], list)
    assert trace.get("displayTimeUnit", "ms") in ("ms", "ns")
    open_async: Counter = Counter()
    for ev in trace["traceEvents"]:
        assert ev["ph"] in PHASES, ev
        assert isinstance(ev["name"], str) and ev["name"], ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int), ev
        assert isinstance(ev.get("args", {}), dict), ev
        if ev["ph"] == "M":
            assert ev["name"] in ("process_name", "thread_name") and "name" in ev["args"], ev
            continue
        assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0, ev
        if ev["ph"] == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0, ev
        if ev["ph"] in ("i", "I"):
            assert ev.get("s", "t") in ("g", "p", "t"), ev
        if ev["ph"] in ("b", "e", "n"):
            assert isinstance(ev["cat"], str) and isinstance(ev["id"], (str, int)), ev
            key = (ev["cat"], ev["id"])
            if ev["ph"] == "b":
                open_async[key] += 1
            elif ev["ph"] == "e":
                assert open_async[key] > 0, f"'e' without 'b': {ev}"
                open_async[key] -= 1
            else:
                assert open_async[key] > 0, f"'n' outside its async slice: {ev}"
    assert not +open_async, f"async slices never ended: {dict(+open_async)}"
    return trace["traceEvents"]


@pytest.fixture(scope="module")
def traced_engine(tiny_model_dir):
    # 8 KV pages for 4 requests of 5-6 pages each: decode must preempt; 16-token prefill chunks.
    config = EngineConfig(max_num_sequence=4, max_total_sequence_length=128, prefill_chunk_size=16,
                          prefix_cache=False)
    engine = Engine(tiny_model_dir("llama"), device="cpu", engine_config=config, enable_tracing=True)
    yield engine
    engine.terminate()


@pytest.mark.engine  # builds an engine on the tiny model (compiles on a cold cache)
def test_four_request_trace(traced_engine):
    prompts = [f"Request number {i}: tell me about the old lighthouse keeper." for i in range(4)]

    def run(prompt):
        return traced_engine.completions.create(prompt=prompt, max_tokens=48, temperature=0.0, ignore_eos=True)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, prompts))
    events = check_trace_event_format(traced_engine.trace())

    requests = defaultdict(list)
    for ev in events:
        if ev.get("cat") == "request":
            requests[ev["id"]].append(ev)
    assert len(requests) == 4
    for spans in requests.values():
        begin, end = spans[0], spans[-1]
        assert (begin["ph"], end["ph"]) == ("b", "e")
        assert end["args"]["finish_reason"] == "length" and end["args"]["completion_tokens"] == 48
        admitted = [ev for ev in spans if ev["name"] == "admitted"]
        assert admitted and begin["ts"] <= admitted[0]["ts"] <= end["ts"]

    steps = [ev for ev in events if ev.get("cat") == "step"]
    prefills = [ev for ev in steps if ev["name"] == "prefill"]
    decodes = [ev for ev in steps if ev["name"] == "decode"]
    assert all(ev["args"]["tokens"] <= 16 for ev in prefills)
    prefilled = Counter()
    for ev in prefills:
        for chunk in ev["args"]["chunks"]:
            prefilled[chunk["request_id"]] += chunk["tokens"]
    for rid, spans in requests.items():  # every prompt token went through a chunk (more if preempted)
        assert prefilled[rid] >= spans[0]["args"]["prompt_tokens"] > 16
    # Every token but the first of each admission came from a decode step.
    preempts = [ev for ev in steps if ev["name"] == "preempt"]
    assert preempts and sum(ev["args"]["batch_size"] for ev in decodes) == 4 * 47 - len(preempts)
    assert max(ev["args"]["batch_size"] for ev in decodes) > 1
    assert any(ev["name"] == "preempted" for spans in requests.values() for ev in spans)
    assert traced_engine.metrics()["preemptions"] > 0
    assert all(r.choices[0].finish_reason == "length" for r in results)


def test_trace_needs_enable_tracing(tiny_engine):
    with pytest.raises(ConfigError, match="enable_tracing=True"):
        tiny_engine.trace()
