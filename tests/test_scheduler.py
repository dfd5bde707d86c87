"""The scheduler through `_core.ThreadedEngine`: chunked prefill interleaved with decode,
preemption under a small KV budget, the prefix cache, n > 1 choices, rejection of requests that
can never fit. Greedy results are compared with each request run alone on `_core.Model`."""

import json
import random
import threading
import time

import numpy as np
import pytest

from test_core_engine import VOCAB, harnesses
from test_core_model import greedy_reference


@pytest.fixture(scope="module")
def pkg4k(tiny_package):
    return tiny_package("llama-4k").path


@pytest.fixture(scope="module")
def alone(pkg4k):
    """Greedy tokens of a prompt computed alone (one prefill, then decode) on `_core.Model`."""
    return greedy_reference(pkg4k, 4096, 2048)


@pytest.fixture
def harness(pkg4k):
    yield from harnesses(pkg4k)


def metrics(h):
    return json.loads(h.engine.metrics())


def collect_choices(h, choices, timeout=30):
    """{request_id: {index: (tokens, finish_reason, error)}} once each request in `choices`
    (id -> n) has a final delta for every choice; fails on a delta after a choice's final."""
    got = {rid: {} for rid in choices}
    finals = {rid: {} for rid in choices}
    while any(len(finals[rid]) < n for rid, n in choices.items()):
        d = h.deltas.get(timeout=timeout)
        assert d.index not in finals[d.request_id], "delta after the final one"
        got[d.request_id].setdefault(d.index, []).extend(d.token_ids)
        if d.finish_reason:
            finals[d.request_id][d.index] = (d.finish_reason, d.error)
    return {rid: {i: (got[rid].get(i, []), *finals[rid][i]) for i in finals[rid]} for rid in choices}


def test_mixed_workload_with_preemption_equals_each_request_alone(harness, alone):
    # 32 requests, prompts of 1..2000 tokens (half behind one shared 300-token prefix, so forks
    # and preemption meet), max_tokens 1..200, from 16 threads with staggered arrivals. The KV
    # budget (2560 tokens) holds one long request at a time: decoding has to preempt.
    rng = np.random.default_rng(0)
    shared = rng.integers(3, VOCAB, size=300).tolist()
    lengths = [1, 2000, 1999, 17, 1500] + rng.integers(1, 2001, size=27).tolist()
    reqs = []
    for i, n in enumerate(lengths):
        tail = rng.integers(3, VOCAB, size=n).tolist()
        prompt = (shared + tail)[:n] if i % 2 and n > 300 else tail
        reqs.append((f"w{i}", prompt, int(rng.integers(1, 201))))
    reqs[1] = ("w1", reqs[1][1], 200)  # one 2000 + 200 request hits the budget's limit
    h = harness(max_num_sequence=8, max_total_sequence_length=2560, prefill_chunk_size=32)

    def client(k):
        r = random.Random(k)
        for rid, prompt, max_tokens in reqs[k::16]:
            time.sleep(r.uniform(0, 0.3))
            h.add(rid, prompt, max_tokens=max_tokens)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res = h.collect([rid for rid, _, _ in reqs], timeout=240)
    for rid, prompt, max_tokens in reqs:
        assert res[rid].finish_reason == "length", (rid, res[rid].error)
        assert res[rid].tokens == alone(prompt, max_tokens), rid
    m = metrics(h)
    assert m["preemptions"] > 0
    assert m["prefill_chunk_size"] == 32
    assert m["running"] == 0 and m["waiting"] == 0 and m["kv_tokens_used"] == 0
    assert m["prefix_hit_tokens"] > 0  # the shared prefix was forked at least once
    assert m["time_to_first_token_mean"] > 0 and m["inter_token_latency_mean"] > 0


def test_no_head_of_line_blocking(harness):
    # While a 2000-token prompt is prefilled 32 tokens per step, the running request keeps
    # receiving tokens: its deltas interleave with the long prefill.
    h = harness(max_num_sequence=4, max_total_sequence_length=4096, prefill_chunk_size=32)
    h.add("runner", [5, 6, 7], max_tokens=400)
    first = h.deltas.get(timeout=30)
    assert first.request_id == "runner"
    h.add("long", np.random.default_rng(1).integers(3, VOCAB, size=2000).tolist(), max_tokens=2)
    runner_deltas_before_long = 0
    while True:
        d = h.deltas.get(timeout=60)
        if d.request_id == "long":
            break
        runner_deltas_before_long += 1
    # 2000 / 32 = 63 prefill steps, each followed by a decode of the runner.
    assert runner_deltas_before_long >= 50
    h.engine.abort_request("runner")


def test_prefix_cache_skips_the_shared_system_prompt(harness):
    rng = np.random.default_rng(2)
    system = rng.integers(3, VOCAB, size=500).tolist()
    first = system + rng.integers(3, VOCAB, size=20).tolist()
    second = system + rng.integers(3, VOCAB, size=30).tolist()
    out = {}
    for cache in (True, False):
        h = harness(prefix_cache=cache)
        h.add("a", first, max_tokens=8)
        h.collect(["a"])
        before = metrics(h)["prefill_tokens"]
        h.add("b", second, max_tokens=8)
        res = h.collect(["b"])["b"]
        out[cache] = (res.tokens, metrics(h)["prefill_tokens"] - before, res.deltas[-1], metrics(h))
    tokens_on, prefilled_on, last_on, m_on = out[True]
    tokens_off, prefilled_off, last_off, m_off = out[False]
    assert tokens_on == tokens_off
    assert prefilled_off == len(second)
    assert prefilled_on <= len(second) - 496  # at most the partial page of the prefix is recomputed
    assert last_on.cached_prompt_tokens >= 496 and last_off.cached_prompt_tokens == 0
    assert m_on["prefix_hit_tokens"] >= 496 and m_on["prefix_hit_rate"] > 0.3
    assert m_on["prefix_cache_sequences"] == 2 and m_off["prefix_cache_sequences"] == 0
    assert m_off["kv_pages_used"] == 0 and m_on["kv_pages_used"] > 0


def test_a_continued_chat_takes_its_cached_sequence_over(harness, alone):
    # Each turn extends the previous prompt + answer: the cached sequence continues as the new
    # request's own (no fork, so decode attends one block), dropping at most a page of tokens the
    # new prompt does not share. A request sharing only the start forks, keeping the entry.
    rng = np.random.default_rng(7)
    h = harness()
    turn = rng.integers(3, VOCAB, size=100).tolist()
    h.add("t1", turn, max_tokens=8)
    answer = h.collect(["t1"])["t1"].tokens
    assert answer == alone(turn, 8)
    # the cache holds turn + answer[:-1]: the next prompt extends it exactly, then drops 5 of it
    for k, drop in enumerate((0, 5), start=2):
        cached = turn + answer[:-1]
        turn = cached[: len(cached) - drop] + rng.integers(3, VOCAB, size=20).tolist()
        h.add(f"t{k}", turn, max_tokens=8)
        answer = h.collect([f"t{k}"])[f"t{k}"].tokens
        assert answer == alone(turn, 8)
        m = metrics(h)
        assert m["prefix_takeovers"] == k - 1 and m["prefix_cache_sequences"] == 1
    other = turn[:60] + rng.integers(3, VOCAB, size=10).tolist()
    h.add("other", other, max_tokens=8)
    assert h.collect(["other"])["other"].tokens == alone(other, 8)
    m = metrics(h)
    assert m["prefix_takeovers"] == 2 and m["prefix_cache_sequences"] == 2


def test_prefix_cache_is_bounded_and_evicted_for_room(harness, alone):
    # 3 sequences may be cached; a KV budget of 1024 tokens forces eviction of cached prefixes
    # before a long request fits. Results stay exact.
    h = harness(prefix_cache_max_sequences=3, max_total_sequence_length=1024)
    rng = np.random.default_rng(3)
    ps = [rng.integers(3, VOCAB, size=200).tolist() for _ in range(5)]
    for i, p in enumerate(ps):
        h.add(f"c{i}", p, max_tokens=4)
        assert h.collect([f"c{i}"])[f"c{i}"].tokens == alone(p, 4)
    assert metrics(h)["prefix_cache_sequences"] == 3
    big = rng.integers(3, VOCAB, size=900).tolist()
    h.add("big", big, max_tokens=100)
    assert h.collect(["big"])["big"].tokens == alone(big, 100)
    assert metrics(h)["prefix_cache_sequences"] <= 1


def test_n_choices_fork_the_prompt(harness, alone):
    h = harness(max_num_sequence=4)
    p = np.random.default_rng(4).integers(3, VOCAB, size=37).tolist()
    h.engine.add_request("g", p, json.dumps({"max_tokens": 12, "n": 3, "ignore_eos": True}))
    res = collect_choices(h, {"g": 3})["g"]
    assert sorted(res) == [0, 1, 2]
    assert all(res[i] == (alone(p, 12), "length", "") for i in range(3))
    assert metrics(h)["prefill_tokens"] == len(p)  # one prefill for all three choices
    # Sampled choices have their own random streams; the same seed replays them all.
    gen = {"max_tokens": 16, "n": 3, "temperature": 1.5, "seed": 7, "ignore_eos": True}
    runs = []
    for rid in ("s1", "s2"):
        h.engine.add_request(rid, p, json.dumps(gen))
        runs.append(collect_choices(h, {rid: 3})[rid])
    assert runs[0] == runs[1]
    assert len({tuple(v[0]) for v in runs[0].values()}) > 1
    # Aborting a request ends every choice.
    h.engine.add_request("ab", p, json.dumps({"max_tokens": 400, "n": 2, "ignore_eos": True}))
    first = h.deltas.get(timeout=30)
    assert first.request_id == "ab"
    h.engine.abort_request("ab")
    res = collect_choices(h, {"ab": 2})["ab"]
    assert {i: r[1] for i, r in res.items()} == {0: "abort", 1: "abort"}
    m = metrics(h)  # only cached prefixes still hold pages
    assert m["running"] == 0 and 0 < m["prefix_cache_sequences"] <= 16
    assert m["kv_pages_used"] <= m["prefix_cache_tokens"] // 16 + m["prefix_cache_sequences"]


def test_requests_that_can_never_fit_are_rejected(harness):
    h = harness(max_num_sequence=2, max_total_sequence_length=256)
    h.add("huge", [5] * 200, max_tokens=100)  # 300 > 256 KV tokens
    h.engine.add_request("wide", [5] * 10, json.dumps({"n": 3}))  # n > max_num_sequence
    h.engine.add_request("heavy", [5] * 100, json.dumps({"n": 2, "max_tokens": 150}))
    h.add("fits", [5] * 200, max_tokens=56)
    res = collect_choices(h, {"huge": 1, "wide": 3, "heavy": 2, "fits": 1})
    assert res["huge"][0][1] == "error" and "KV cache capacity of 256" in res["huge"][0][2]
    # Every choice of a rejected request gets its final delta.
    assert all(r[1] == "error" and "max_num_sequence" in r[2] for r in res["wide"].values())
    assert all(r[1] == "error" and "n = 2" in r[2] for r in res["heavy"].values())
    assert res["fits"][0][1] == "length" and len(res["fits"][0][0]) == 56
