"""What grammar-constrained decoding costs: decode tokens/s of SmolLM2 with and without a JSON
schema, at batch 1 and 16 (not a test: run by hand, numbers in docs/benchmarks.md).

    python tools/bench_grammar.py [--rounds 5] [--tokens 128] [--batches 1 16]

Every request decodes exactly --tokens tokens (ignore_eos; the schema asks for more items than fit,
so the grammar never ends first), all requests of a batch start together, so the core's mean
inter-token latency is the step period and batch / latency the decode rate. Rounds alternate
plain and constrained runs; the report gives medians and spreads (the machine may be shared), and
from the engine's trace the share of decode-step time the step loop spent waiting for masks.
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor

from tvmlm import Engine, EngineConfig
from tvmlm.default_model import default_model_path

SCHEMA = {  # strings, numbers and nesting: the usual cost mix of JSON output
    "type": "array",
    "minItems": 200,
    "items": {"type": "object",
              "properties": {"name": {"type": "string"}, "id": {"type": "integer"},
                             "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}}},
              "required": ["name", "id", "tags"]},
}
PROMPT = "List people as JSON objects with a name, an id and colour tags."


def run(engine: Engine, batch: int, tokens: int, constrained: bool) -> float:
    """Decode tokens/s of `batch` concurrent requests."""
    extra = {"response_format": {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}}} \
        if constrained else {}

    def one(i: int):
        messages = [{"role": "user", "content": f"{PROMPT} (list {i})"}]
        return engine.chat.completions.create(messages=messages, max_tokens=tokens, temperature=0.7, seed=i,
                                              ignore_eos=True, **extra)

    with ThreadPoolExecutor(batch) as pool:
        responses = list(pool.map(one, range(batch)))
    for r in responses:
        assert r.choices[0].finish_reason == "length", r.choices[0]
    itl = statistics.mean(r.usage.extra["inter_token_latency_s"] for r in responses)
    return batch / itl


def mask_wait_share(engine: Engine) -> float:
    """Of the time from the first to the last decode step since the last call, the share the step
    loop spent waiting for grammar masks."""
    events = engine.trace(clear=True)["traceEvents"]
    decodes = [e for e in events if e["name"] == "decode"]
    waited = sum(e["dur"] for e in events if e["name"] == "token_mask_wait")
    span = decodes[-1]["ts"] + decodes[-1]["dur"] - decodes[0]["ts"]
    return waited / span


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    engine = Engine(default_model_path(), device="cpu", engine_config=EngineConfig(max_num_sequence=max(args.batches)),
                    enable_tracing=True)
    try:
        for batch in args.batches:
            run(engine, batch, 16, True)  # warm-up: xgrammar import, grammar compile, caches
            rates, waits = {False: [], True: []}, []
            for _ in range(args.rounds):
                for constrained in (False, True):
                    engine.trace(clear=True)
                    rates[constrained].append(run(engine, batch, args.tokens, constrained))
                waits.append(mask_wait_share(engine))
            plain, json_ = statistics.median(rates[False]), statistics.median(rates[True])
            print(f"batch {batch:2d}: plain {plain:7.1f} tok/s (range {min(rates[False]):.1f}-{max(rates[False]):.1f}), "
                  f"json_schema {json_:7.1f} tok/s (range {min(rates[True]):.1f}-{max(rates[True]):.1f}), "
                  f"cost {100 * (1 - json_ / plain):+.1f}%; step loop waited for masks "
                  f"{100 * statistics.median(waits):.2f}% of decode time (max {100 * max(waits):.2f}%)", flush=True)
    finally:
        engine.terminate()


if __name__ == "__main__":
    main()
