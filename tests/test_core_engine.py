"""`_core.ThreadedEngine` end to end: two background threads, deltas through the callback."""

import json
import queue
import shutil
import threading
import time

import numpy as np
import pytest

from tvmlm import _core

VOCAB = 611


class Result:
    def __init__(self):
        self.tokens, self.deltas = [], []
        self.finish_reason = None
        self.error = ""


class Harness:
    """An engine with both loops on their own threads, collecting deltas into a queue."""

    def __init__(self, pkg, callback=None, trace=None, **config):
        self.deltas = queue.Queue()
        self.engine = _core.ThreadedEngine()
        self.engine.init("cpu:0", callback or self.on_deltas, trace)
        cfg = {"model": str(pkg), "max_num_sequence": 4, "max_total_sequence_length": 2048,
               "prefill_chunk_size": 512, "num_threads": 2}
        cfg.update(config)
        self.engine.reload(json.dumps(cfg))
        self.threads = [threading.Thread(target=self.engine.run_background_loop),
                        threading.Thread(target=self.engine.run_background_stream_back_loop)]
        for t in self.threads:
            t.start()

    def on_deltas(self, deltas):
        for d in deltas:
            self.deltas.put(d)

    def add(self, request_id, prompt, **gen):
        # The references are plain greedy runs: a random test model may emit its eos anywhere.
        gen.setdefault("ignore_eos", True)
        self.engine.add_request(request_id, list(prompt), json.dumps(gen))

    def collect(self, ids, timeout=60.0):
        results = {i: Result() for i in ids}
        pending = set(ids)
        deadline = time.monotonic() + timeout
        while pending:
            d = self.deltas.get(timeout=max(0.01, deadline - time.monotonic()))
            r = results[d.request_id]
            assert r.finish_reason is None, f"delta after the final one for {d.request_id}"
            r.deltas.append(d)
            r.tokens.extend(d.token_ids)
            if d.finish_reason is not None:
                r.finish_reason, r.error = d.finish_reason, d.error
                pending.discard(d.request_id)
        return results

    def close(self):
        self.engine.exit_background_loop()
        for t in self.threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self.threads)


def harnesses(pkg):
    """Fixture body: yields make(**engine_config) -> Harness; closes every harness made."""
    made = []

    def make(**kw):
        made.append(Harness(pkg, **kw))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.fixture
def harness(pkg):
    yield from harnesses(pkg)


def prompts(n, seed=0, lengths=(5, 11, 23, 40)):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, size=lengths[i % len(lengths)]).tolist() for i in range(n)]


def test_four_requests_end_to_end(harness, reference):
    h = harness()
    ps = prompts(4)
    for i, p in enumerate(ps):
        h.add(f"r{i}", p, max_tokens=16)
    res = h.collect([f"r{i}" for i in range(4)])
    for i, p in enumerate(ps):
        r = res[f"r{i}"]
        assert r.finish_reason == "length" and r.error == ""
        assert r.tokens == reference(p, 16)
        assert len(r.deltas) > 1  # streamed, not delivered at the end
        assert r.deltas[-1].completion_tokens == 16
        assert all(d.prompt_tokens == len(p) for d in r.deltas)
    m = json.loads(h.engine.metrics())
    assert m["requests_finished"] == 4 and m["generated_tokens"] == 64
    assert m["prompt_tokens"] == sum(map(len, ps))
    assert m["running"] == 0 and m["waiting"] == 0 and m["kv_tokens_used"] == 0
    assert m["kv_tokens_total"] == 2048
    assert m["decode_tokens_per_second"] > 0 and m["prefill_tokens_per_second"] > 0


def test_more_requests_than_sequences_queue_up(harness, reference):
    h = harness(max_num_sequence=2)
    ps = prompts(7, seed=1)
    for i, p in enumerate(ps):
        h.add(f"q{i}", p, max_tokens=6)
    res = h.collect([f"q{i}" for i in range(7)])
    for i, p in enumerate(ps):
        assert res[f"q{i}"].tokens == reference(p, 6)


def test_chunked_prefill_and_preemption_keep_results(harness, reference):
    # 128 KV tokens for 4 requests of up to 20 + 30 tokens: decoding must preempt and recompute.
    h = harness(max_total_sequence_length=128, prefill_chunk_size=16)
    ps = prompts(4, seed=2, lengths=(20, 17, 9, 20))
    for i, p in enumerate(ps):
        h.add(f"p{i}", p, max_tokens=30)
    res = h.collect([f"p{i}" for i in range(4)])
    for i, p in enumerate(ps):
        assert res[f"p{i}"].finish_reason == "length"
        assert res[f"p{i}"].tokens == reference(p, 30)
    m = json.loads(h.engine.metrics())
    assert m["preemptions"] > 0
    assert m["prefill_chunk_size"] == 16
    assert m["prefill_tokens"] > m["prompt_tokens"]  # recomputation after preemption


def test_stop_token_ends_request_and_is_not_streamed(harness, reference):
    h = harness()
    p = prompts(1, seed=3)[0]
    ref = reference(p, 12)
    stop = ref[5]
    first = ref.index(stop)
    h.add("s", p, max_tokens=12, stop_token_ids=[stop])
    r = h.collect(["s"])["s"]
    assert r.finish_reason == "stop"
    assert r.tokens == ref[:first]
    assert r.deltas[-1].completion_tokens == first + 1


def test_eos_from_metadata_and_ignore_eos(pkg, tmp_path, reference):
    p = prompts(1, seed=4)[0]
    ref = reference(p, 10)
    eos_pkg = tmp_path / "pkg"
    shutil.copytree(pkg, eos_pkg)
    meta = json.loads((eos_pkg / "metadata.json").read_text())
    meta["eos_token_ids"] = [ref[3]]
    (eos_pkg / "metadata.json").write_text(json.dumps(meta))
    h = Harness(eos_pkg)
    try:
        h.add("eos", p, max_tokens=10, ignore_eos=False)
        h.add("ignore", p, max_tokens=10, ignore_eos=True)
        res = h.collect(["eos", "ignore"])
    finally:
        h.close()
    assert res["eos"].finish_reason == "stop"
    assert res["eos"].tokens == ref[: ref.index(ref[3])]
    assert res["ignore"].finish_reason == "length" and res["ignore"].tokens == ref


def test_context_window_limits_generation(harness):
    h = harness()
    p = prompts(1, seed=5, lengths=(500,))[0]  # the test models have a 512-token window
    h.add("long", p, max_tokens=100)
    r = h.collect(["long"])["long"]
    assert r.finish_reason == "length" and len(r.tokens) == 12


def test_abort_mid_stream(harness, reference):
    h = harness()
    p_other = prompts(1, seed=6)[0]
    h.add("victim", prompts(1, seed=7)[0], max_tokens=400)
    first = h.deltas.get(timeout=30)
    assert first.request_id == "victim" and first.finish_reason is None
    h.add("other", p_other, max_tokens=20)
    h.engine.abort_request("victim")
    res = h.collect(["victim", "other"])
    assert res["victim"].finish_reason == "abort"
    assert len(first.token_ids) + len(res["victim"].tokens) < 400
    assert res["other"].finish_reason == "length"
    assert res["other"].tokens == reference(p_other, 20)
    h.engine.abort_request("victim")  # finished already: a no-op
    h.engine.abort_request("never-existed")
    h.add("after", p_other, max_tokens=3)
    assert h.collect(["after"])["after"].tokens == reference(p_other, 3)


def test_abort_before_the_request_is_scheduled(harness):
    h = harness(max_num_sequence=1)
    h.add("busy", [1, 2, 3], max_tokens=200)
    h.add("queued", [4, 5, 6], max_tokens=200)
    h.engine.abort_request("queued")
    res = h.collect(["busy", "queued"])
    assert res["queued"].finish_reason == "abort" and res["queued"].tokens == []
    assert res["busy"].finish_reason == "length"


def test_bad_requests_get_error_deltas_and_engine_keeps_serving(harness, reference):
    h = harness()
    good = prompts(1, seed=8)[0]
    h.add("good1", good, max_tokens=8)
    h.add("oov", [1, 2, VOCAB], max_tokens=4)
    h.add("negative", [1, -5], max_tokens=4)
    h.add("empty", [], max_tokens=4)
    h.add("too-long", [1] * 600, max_tokens=4)
    h.add("bad-temp", [1, 2], temperature=-1.0)
    h.engine.add_request("bad-json", [1, 2], "{not json")
    h.add("good2", good, max_tokens=8)
    bad = ["oov", "negative", "empty", "too-long", "bad-temp", "bad-json"]
    res = h.collect(["good1", "good2"] + bad)
    for rid in bad:
        assert res[rid].finish_reason == "error", rid
        assert res[rid].error and res[rid].tokens == []
    assert "outside the vocabulary" in res["oov"].error
    assert "empty" in res["empty"].error
    assert "512" in res["too-long"].error
    assert "temperature" in res["bad-temp"].error
    assert "JSON" in res["bad-json"].error
    assert res["good1"].tokens == res["good2"].tokens == reference(good, 8)
    assert json.loads(h.engine.metrics())["requests_errored"] == len(bad)


def test_duplicate_active_request_id_is_rejected(harness):
    h = harness()
    h.add("dup", [1, 2, 3], max_tokens=300)
    with pytest.raises(ValueError, match="already active"):
        h.add("dup", [1, 2, 3], max_tokens=3)
    h.engine.abort_request("dup")
    assert h.collect(["dup"])["dup"].finish_reason == "abort"
    h.add("dup", [1, 2, 3], max_tokens=3)  # free again once finished
    assert h.collect(["dup"])["dup"].finish_reason == "length"


def test_seeded_sampling_is_reproducible(harness):
    h = harness()
    p = prompts(1, seed=9)[0]
    gen = dict(max_tokens=24, temperature=1.5, top_p=0.95, top_k=50)
    h.add("a", p, seed=42, **gen)
    h.add("b", p, seed=42, **gen)  # same batch, same seed
    h.add("c", p, seed=43, **gen)
    res = h.collect(["a", "b", "c"])
    h.add("d", p, seed=42, **gen)  # later, alone
    res.update(h.collect(["d"]))
    assert res["a"].tokens == res["b"].tokens == res["d"].tokens
    assert res["a"].tokens != res["c"].tokens
    assert len(res["a"].tokens) == 24


def test_idle_engine_uses_no_cpu(harness):
    h = harness()
    h.add("warm", [1, 2, 3], max_tokens=8)
    h.collect(["warm"])
    time.sleep(0.2)  # TVM's workers spin briefly after a job (see model/thread_pool.cc)
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(1.0)
    cpu = time.process_time() - cpu0
    assert time.monotonic() - wall0 >= 1.0
    assert cpu < 0.05, f"idle engine burned {cpu:.3f} s of CPU in 1 s"


def test_many_threads_submitting(harness, reference):
    h = harness(max_num_sequence=4)
    ps = prompts(16, seed=11)
    errors = []

    def submit(k):
        try:
            for i in range(k, 16, 4):
                h.add(f"m{i}", ps[i], max_tokens=5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=submit, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    res = h.collect([f"m{i}" for i in range(16)])
    for i, p in enumerate(ps):
        assert res[f"m{i}"].tokens == reference(p, 5)
