"""`_core.ThreadedEngine`'s lifecycle: exit with requests pending or loops not started, a stream
callback that raises, the trace recorder, and reload errors and recovery."""

import json
import queue
import threading

import pytest

from tvmlm import _core
from test_core_engine import Harness, prompts


def test_exit_aborts_pending_requests_and_joins(pkg):
    h = Harness(pkg, max_num_sequence=1)
    for i in range(3):
        h.add(f"x{i}", [1, 2, 3], max_tokens=500)
    h.deltas.get(timeout=30)  # running
    h.close()
    reasons = {}
    while not h.deltas.empty():
        d = h.deltas.get()
        if d.finish_reason:
            reasons[d.request_id] = d.finish_reason
    assert reasons == {"x0": "abort", "x1": "abort", "x2": "abort"}
    with pytest.raises(RuntimeError, match="shut down"):
        h.add("late", [1], max_tokens=1)


def test_exit_without_step_loop_still_ends_stream_loop(pkg):
    q = queue.Queue()
    e = _core.ThreadedEngine()
    e.init("cpu:0", lambda ds: [q.put(d) for d in ds])
    e.reload(json.dumps({"model": str(pkg)}))
    e.add_request("orphan", [1, 2], json.dumps({}))
    t = threading.Thread(target=e.run_background_stream_back_loop)
    t.start()
    e.exit_background_loop()
    t.join(timeout=30)
    assert not t.is_alive()
    d = q.get_nowait()
    assert (d.request_id, d.finish_reason) == ("orphan", "abort")
    e.run_background_loop()  # after exit: returns at once


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_callback_exception_does_not_stop_delivery(pkg, reference):
    got = queue.Queue()
    calls = []

    def flaky(deltas):
        calls.append(len(deltas))
        for d in deltas:
            got.put(d)
        if len(calls) == 1:
            raise RuntimeError("callback bug")

    h = Harness(pkg, callback=flaky)
    h.deltas = got
    try:
        p = prompts(1, seed=10)[0]
        h.add("a", p, max_tokens=10)
        first = h.collect(["a"])["a"]
        h.add("b", p, max_tokens=10)  # delivered by later calls, after the raising one
        second = h.collect(["b"])["b"]
    finally:
        h.close()
    assert first.tokens == second.tokens == reference(p, 10)
    assert len(calls) >= 2


def test_trace_recorder_gets_step_events(pkg):
    events = []
    h = Harness(pkg, trace=events.append)
    try:
        h.add("t", [1, 2, 3, 4], max_tokens=5)
        h.collect(["t"])
    finally:
        h.close()
    # Chrome trace events (tests/test_tracing.py checks the format): the request's async slice
    # around one prefill and four decode steps.
    kinds = [(json.loads(e)["ph"], json.loads(e)["name"]) for e in events]
    steps = [name for ph, name in kinds if ph == "X"]
    assert kinds[0] == ("b", "request") and kinds[-1] == ("e", "request")
    assert steps[0] == "prefill" and steps.count("decode") == 4


def test_reload_errors_and_recovery(pkg, tmp_path):
    q = queue.Queue()
    e = _core.ThreadedEngine()
    with pytest.raises(RuntimeError, match="init"):
        e.reload(json.dumps({"model": str(pkg)}))
    e.init("cpu:0", lambda ds: [q.put(d) for d in ds])
    with pytest.raises(RuntimeError):
        e.init("cpu:0", lambda ds: None)
    threads = [threading.Thread(target=e.run_background_loop),
               threading.Thread(target=e.run_background_stream_back_loop)]
    for t in threads:
        t.start()
    try:
        with pytest.raises(ValueError, match="invalid JSON"):
            e.reload("{")
        with pytest.raises(ValueError, match="model"):
            e.reload(json.dumps({"max_num_sequence": 2}))
        with pytest.raises(ValueError, match="max_num_sequence"):
            e.reload(json.dumps({"model": str(pkg), "max_num_sequence": 0}))
        with pytest.raises(ValueError, match="compiled max_batch_size"):
            e.reload(json.dumps({"model": str(pkg), "max_num_sequence": 100000}))
        with pytest.raises(RuntimeError, match="not found"):
            e.reload(json.dumps({"model": str(tmp_path / "missing")}))
        assert json.loads(e.metrics()) == {"loaded": False}
        e.add_request("unloaded", [1, 2], "{}")
        d = q.get(timeout=30)
        assert (d.finish_reason, d.error) == ("error", "no model loaded (call reload)")

        e.reload(json.dumps({"model": str(pkg), "max_num_sequence": 2}))
        e.add_request("ok", [1, 2], json.dumps({"max_tokens": 2}))
        tokens = []
        while True:
            d = q.get(timeout=30)
            tokens += d.token_ids
            if d.finish_reason:
                break
        assert d.finish_reason == "length" and len(tokens) == 2

        # Reset aborts in-flight requests and zeroes the counters; reload replaces the model.
        # "long" runs until the end of the 512-token window, ignoring eos; reset lands long before.
        e.add_request("long", [1, 2], json.dumps({"max_tokens": 505, "ignore_eos": True}))
        generated = len(q.get(timeout=30).token_ids)
        e.reset()
        while True:
            d = q.get(timeout=30)
            generated += len(d.token_ids)
            if d.finish_reason:
                break
        # On a badly overloaded machine the request may still win the race; it must not hang.
        assert d.request_id == "long"
        assert d.finish_reason == "abort" or (d.finish_reason == "length" and generated == 505)
        m = json.loads(e.metrics())
        assert m["loaded"] and m["requests_finished"] == 0 and m["generated_tokens"] == 0
        e.unload()
        assert json.loads(e.metrics()) == {"loaded": False}
    finally:
        e.exit_background_loop()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
