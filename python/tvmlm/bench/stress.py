"""Load test: many concurrent clients send mixed requests (streamed, whole, aborted mid-stream,
n > 1, shared system prompts) for a bounded time, then check that every request was accounted for.

    python -m tvmlm.bench.stress                      # a tiny random model it builds (seconds)
    python -m tvmlm.bench.stress --model smollm2 --seconds 60
    python -m tvmlm.bench.stress --model PATH --clients 64 --requests 1000

Prints completed / aborted / errors / lost / hangs and peak RSS; exits 1 when lost or hangs > 0.
lost: a request that ended without every choice finishing (stop/length) and without an error or an
abort it asked for. hang: a request still waiting when the engine has made no progress for
`--grace` seconds (slow is not hung: after the time limit, requests in flight are waited for as long
as tokens keep coming, up to `--max-wait`).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from ..testing.numpy_model import WORDS
from ..testing.numpy_model import make_numpy_llama as build_tiny_model

class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.errors: list[str] = []
        self.in_flight: dict[int, tuple[str, float]] = {}

    def add(self, key: str, error: str = "") -> None:
        with self.lock:
            self.counts[key] += 1
            if error and len(self.errors) < 5:
                self.errors.append(error)


def one_request(engine, rng: random.Random, system: str, max_tokens_cap: int) -> str:
    """Run one random request; returns completed / aborted / lost (errors raise)."""
    kind = rng.choice(["stream", "whole", "abort"])
    n = 2 if rng.random() < 0.1 else 1
    words = " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 5, 20, 80, 300])))
    common = dict(max_tokens=rng.randint(1, max_tokens_cap), n=n, temperature=rng.choice([0.0, 0.8]),
                  ignore_eos=rng.random() < 0.5)
    chat = rng.random() < 0.5
    if chat:
        messages = ([{"role": "system", "content": system}] if rng.random() < 0.5 else []) + [
            {"role": "user", "content": words}]
        create = lambda **kw: engine.chat.completions.create(messages=messages, **common, **kw)  # noqa: E731
    else:
        create = lambda **kw: engine.completions.create(prompt=words, **common, **kw)  # noqa: E731
    if kind == "whole":
        r = create()
        ok = len(r.choices) == n and all(c.finish_reason in ("stop", "length") for c in r.choices)
        return "completed" if ok else "lost"
    stream = create(stream=True)
    finished: set[int] = set()
    stop_after = rng.randint(0, 5) if kind == "abort" else None
    for i, chunk in enumerate(stream):
        for c in chunk.choices:
            if c.finish_reason is not None:
                finished.add(c.index)
        if stop_after is not None and i >= stop_after:
            stream.close()  # the engine aborts the request
            return "aborted"
    return "completed" if len(finished) == n else "lost"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model path, 'smollm2', or omitted for a tiny random model")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=120.0, help="stop starting requests after this")
    ap.add_argument("--grace", type=float, default=30.0,
                    help="after the time limit, a request is hung when nothing progressed this long")
    ap.add_argument("--max-wait", type=float, default=600.0, help="hard limit on waiting after the time limit")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-num-sequence", type=int, default=16)
    ap.add_argument("--max-total-sequence-length", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from tvmlm import Engine, EngineConfig
    from tvmlm.default_model import default_model_path

    tmp = None
    if args.model is None:
        tmp = tempfile.TemporaryDirectory(prefix="tvmlm-stress-")
        model = build_tiny_model(Path(tmp.name) / "tiny")
        total = args.max_total_sequence_length or 2048  # small: preemption is part of the test
    else:
        model = default_model_path() if args.model == "smollm2" else Path(args.model)
        total = args.max_total_sequence_length
    config = EngineConfig(max_num_sequence=args.max_num_sequence, max_total_sequence_length=total)
    engine = Engine(model, device="cpu", engine_config=config)
    print(f"model {model}: {engine.config.max_num_sequence} sequences, "
          f"{engine.config.max_total_sequence_length} KV tokens, chunk {engine.config.prefill_chunk_size}")

    stats = Stats()
    next_request = iter(range(args.requests))
    take = threading.Lock()
    deadline = time.monotonic() + args.seconds
    system = "You are a careful assistant. " + " ".join(WORDS[:60])

    def client(k: int) -> None:
        rng = random.Random(args.seed * 1000 + k)
        while time.monotonic() < deadline:
            with take:
                i = next(next_request, None)
            if i is None:
                return
            with stats.lock:
                stats.in_flight[k] = (f"request {i}", time.monotonic())
            try:
                stats.add(one_request(engine, rng, system, args.max_tokens))
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                stats.add("errors", f"{type(exc).__name__}: {exc}")
            with stats.lock:
                stats.in_flight.pop(k, None)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)]
    for t in threads:
        t.start()
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.5)
    # Drain: wait while the engine still makes progress.
    progress, last_change = None, time.monotonic()
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline + args.max_wait:
        m = engine.metrics()
        now = (m["generated_tokens"], m["prefill_tokens"], m["requests_finished"])
        if now != progress:
            progress, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > args.grace:
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    hangs = sum(t.is_alive() for t in threads)
    metrics = engine.metrics()
    with stats.lock:
        c = Counter(stats.counts)  # before terminate(), which aborts whatever still hangs
    engine.terminate()  # ends any hung stream, so the process can exit
    started = sum(c.values()) + hangs
    lost = c["lost"]
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "seconds": round(elapsed, 1), "requests": started, "completed": c["completed"],
        "aborted": c["aborted"], "errors": c["errors"], "lost": lost, "hangs": hangs,
        "peak_rss_mib": round(peak_rss_mib, 1), "load_avg": [round(x, 2) for x in os.getloadavg()],
        "preemptions": metrics["preemptions"], "prefix_hit_rate": round(metrics["prefix_hit_rate"], 3),
        "generated_tokens": metrics["generated_tokens"],
        "decode_tokens_per_second": round(metrics["decode_tokens_per_second"], 1),
        "prefill_tokens_per_second": round(metrics["prefill_tokens_per_second"], 1),
        "time_to_first_token_mean_s": round(metrics["time_to_first_token_mean"], 3),
        "inter_token_latency_mean_s": round(metrics["inter_token_latency_mean"], 4),
    }
    for key, value in report.items():
        print(f"{key:>28}: {value}")
    for err in stats.errors:
        print("error sample:", err)
    if tmp is not None:
        tmp.cleanup()
    return 1 if lost or hangs else 0


if __name__ == "__main__":
    sys.exit(main())
