"""`_core.DeltaRouter`, the C++ stream callback the Python Engine uses: deltas sorted into
per-request inboxes, waits that release the GIL, the ready set of notify inboxes."""

import contextlib
import json
import threading
import time

import pytest

from tvmlm import _core
from test_core_engine import prompts


@contextlib.contextmanager
def routed_engine(pkg):
    """A loaded ThreadedEngine whose stream callback is a DeltaRouter: (engine, router)."""
    router = _core.DeltaRouter()
    e = _core.ThreadedEngine()
    e.init("cpu:0", router)
    threads = [threading.Thread(target=e.run_background_loop), threading.Thread(target=e.run_background_stream_back_loop)]
    for t in threads:
        t.start()
    try:
        e.reload(json.dumps({"model": str(pkg), "max_num_sequence": 4, "max_total_sequence_length": 1024,
                             "prefill_chunk_size": 256}))
        yield e, router
    finally:
        e.exit_background_loop()
        for t in threads:
            t.join(timeout=30)


def test_router_sorts_deltas_into_inboxes(pkg, reference):
    with routed_engine(pkg) as (e, router):
        ps = prompts(3, seed=5)
        inboxes = {f"r{i}": router.open(f"r{i}", 1) for i in range(3)}
        for i, p in enumerate(ps):
            e.add_request(f"r{i}", p, json.dumps({"max_tokens": 6, "temperature": 0.0}))
        for i, p in enumerate(ps):
            tokens, finish = [], None
            while finish is None:
                for d in inboxes[f"r{i}"].take():
                    assert d.index == 0 and d.prompt_tokens == len(p)
                    tokens += d.token_ids
                    finish = d.finish_reason
            assert finish == "length" and tokens == reference(p, 6)
        assert router.open_requests == 0  # each route ended with its final delta


def test_router_inbox_without_stream_wakes_per_finished_choice(pkg, reference):
    with routed_engine(pkg) as (e, router):
        p = prompts(1, seed=6)[0]
        inbox = router.open("r", 2, stream=False)
        e.add_request("r", p, json.dumps({"max_tokens": 7, "temperature": 0.0, "n": 2}))
        takes, deltas = 0, {0: [], 1: []}
        while not all(ds and ds[-1].finish_reason for ds in deltas.values()):
            got = inbox.take()
            takes += 1
            assert any(d.finish_reason for d in got)  # woken for a finished choice only
            for d in got:
                deltas[d.index].append(d)
        assert takes <= 2
        for ds in deltas.values():
            # one delta per choice, or a merged partial taken along with the other choice's end
            assert len(ds) <= 2 and ds[-1].finish_reason == "length"
            assert [t for d in ds for t in d.token_ids] == reference(p, 7)
            assert ds[-1].completion_tokens == 7 and ds[-1].prompt_tokens == len(p)


def test_router_close_wakes_waiters_and_discard_forgets():
    router = _core.DeltaRouter()
    inbox = router.open("a", 2)
    router.open("b", 1)
    with pytest.raises(ValueError, match="already open"):
        router.open("a", 1)
    router.discard("b")
    assert router.open_requests == 1
    threading.Timer(0.2, router.close).start()
    t0 = time.time()
    assert inbox.take() == []  # closed with nothing pending: the caller ends the request
    assert time.time() - t0 < 10
    assert router.open("c", 1).take() == []  # opened after close: closed at once


def test_router_ready_set_names_woken_notify_inboxes(pkg, reference):
    with routed_engine(pkg) as (e, router):
        ps = prompts(2, seed=7)
        quiet = router.open("quiet", 1)  # not notify: never in the ready set
        inboxes = {"s": router.open("s", 1, notify=True), "w": router.open("w", 1, stream=False, notify=True)}
        assert inboxes["s"].poll() is None  # nothing yet, and poll does not wait
        e.add_request("quiet", ps[0], json.dumps({"max_tokens": 3, "temperature": 0.0}))
        for rid, p in zip(inboxes, ps):
            e.add_request(rid, p, json.dumps({"max_tokens": 5, "temperature": 0.0}))
        tokens, woken, done = {"s": [], "w": []}, [], set()
        while done != {"s", "w"}:
            ids = router.wait_ready()
            woken += ids
            for rid in set(ids):
                for d in inboxes[rid].poll() or []:
                    tokens[rid] += d.token_ids
                    if d.finish_reason:
                        done.add(rid)
        assert set(woken) == {"s", "w"} and woken.count("w") == 1  # not streamed: once, when it finished
        assert tokens == {"s": reference(ps[0], 5), "w": reference(ps[1], 5)}
        assert [t for d in quiet.take() for t in d.token_ids]
    threading.Timer(0.2, router.close).start()
    assert router.wait_ready() is None  # closed: the waiter thread's signal to stop


def test_waiting_on_an_inbox_can_be_interrupted():
    import _thread
    import signal

    router = _core.DeltaRouter()
    inbox = router.open("a", 1)
    # A process started in the background inherits SIGINT ignored, and interrupt_main() then does
    # nothing: install Python's handler for this test. The router closes after 10 s regardless,
    # so a lost interrupt fails the test instead of hanging it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    guard = threading.Timer(10, router.close)
    guard.start()
    try:
        threading.Timer(0.3, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            inbox.take()
    finally:
        guard.cancel()
        signal.signal(signal.SIGINT, previous)
