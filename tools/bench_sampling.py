"""Decode tokens/s with and without the sampler's penalties and logprobs, at batch 1 and 16.

    python tools/bench_sampling.py [--rounds 3] [--tokens 128]

Runs SmolLM2 (the default model) with `batch` concurrent completions of `--tokens` tokens each
(ignore_eos, short prompts, so decode dominates) under each sampling setting, the settings
interleaved round by round; prints the median tokens/s (completion tokens / wall seconds) and
each setting's cost relative to plain sampling (temperature 1).

End-to-end rates are noisy on a shared machine, so it also measures the sampler alone: the CPU
time of one draw per setting on a real SmolLM2 logits row (with a 100-token prompt and 128
generated tokens of history), as a share of the model's own decode time per token
(`decode_tokens_per_second` of the core's metrics, which counts only the forward passes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np

from tvmlm import Engine, EngineConfig
from tvmlm.default_model import default_model_path

SETTINGS = {
    "plain": dict(temperature=1.0),
    "penalties": dict(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.1),
    "logprobs": dict(temperature=1.0, logprobs=5),
    "penalties+logprobs": dict(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.5,
                               repetition_penalty=1.1, logprobs=5),
    "chat defaults": dict(temperature=0.2, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1),
}


def run(engine: Engine, batch: int, tokens: int, sampling: dict) -> float:
    done: list[int] = []

    def one(i: int) -> None:
        r = engine.completions.create(prompt=[1, 504, 3458 + i, 314], max_tokens=tokens, ignore_eos=True,
                                      seed=i, **sampling)
        done.append(r.usage.completion_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(batch)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


SAMPLER_SETTINGS = {
    "plain": dict(temperature=1.0),
    "penalties": dict(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.1),
    "logprobs (top 5)": dict(temperature=1.0, logprobs=True, top_logprobs=5),
    "logprobs (top 20)": dict(temperature=1.0, logprobs=True, top_logprobs=20),
    "penalties+logprobs": dict(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.5,
                               repetition_penalty=1.1, logprobs=True, top_logprobs=5),
    "chat defaults": dict(temperature=0.2, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1),
}


def sampler_costs(engine: Engine, draws: int = 2000) -> dict[str, float]:
    """CPU seconds per draw of each SAMPLER_SETTINGS entry, on a real logits row."""
    from tvmlm import _core

    model = _core.Model(str(engine.package_dir), "cpu:0", 1)
    model.create_kv_cache(1, 512, 128)
    model.add_sequence(0)
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(3, 49000, 100)]
    row = model.prefill([0], [prompt])[0].tolist()
    generated = [int(t) for t in rng.integers(3, 49000, 128)]
    out = {}
    for name, config in SAMPLER_SETTINGS.items():
        hook = _core._sample_logprobs if config.get("logprobs") else _core._sample_tokens
        per = []
        for n in (1, draws + 1):
            t = time.process_time()
            hook(row, json.dumps({**config, "seed": 1}), n, prompt, generated)
            per.append(time.process_time() - t)
        out[name] = (per[1] - per[0]) / draws
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,16")
    args = parser.parse_args()
    with Engine(default_model_path(), device="cpu", engine_config=EngineConfig(max_num_sequence=16)) as engine:
        costs = sampler_costs(engine)
        step = {}
        for batch in map(int, args.batches.split(",")):
            before = engine.metrics()
            run(engine, batch, args.tokens, SETTINGS["plain"])
            after = engine.metrics()
            step[batch] = (after["decode_seconds"] - before["decode_seconds"]) / (
                after["decode_tokens"] - before["decode_tokens"])
        print("sampler CPU time per token, and its share of the model's decode time per token")
        print("  " + " " * 20 + "   us/token" + "".join(f"   batch {b} ({step[b] * 1e3:.2f} ms/token)" for b in step))
        for name, cost in costs.items():
            extra = cost - costs["plain"]
            shares = "".join(f"   {100 * cost / step[b]:6.2f}% ({100 * extra / step[b]:+.2f}% vs plain)" for b in step)
            print(f"  {name:20s} {cost * 1e6:9.1f}{shares}")
        for batch in map(int, args.batches.split(",")):
            run(engine, batch, 16, SETTINGS["plain"])  # warm up
            rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
            for _ in range(args.rounds):
                for name, sampling in SETTINGS.items():
                    rates[name].append(run(engine, batch, args.tokens, sampling))
            base = statistics.median(rates["plain"])
            print(f"batch {batch}: median decode tok/s over {args.rounds} rounds (min-max)")
            for name, r in rates.items():
                med = statistics.median(r)
                print(f"  {name:20s} {med:8.1f}  ({min(r):.1f}-{max(r):.1f})  {100 * (med / base - 1):+5.1f}%")


if __name__ == "__main__":
    main()
