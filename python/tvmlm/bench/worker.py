"""One benchmark job in a fresh process: `python -m tvmlm.bench.worker '<json spec>'`.

A job is one peer variant on one model at one thread count, and one of three kinds:

- "single": load (from a warm compile cache for tvmlm), prefill each prompt length once, decode
  batch-1 at each context length, then report the process's peak RSS: a serving process that
  never compiled, sized for (and filled to) the same context length for every peer.
- "concurrent": N sequences decoded together (tvmlm: N requests in flight; llama.cpp: N seq_ids
  in one batch per llama_decode; transformers: one static batch).
- "cold": tvmlm only, a load on an empty compile cache (convert + compile + load).

The result is one line on stdout: `BENCH_RESULT {json}`.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

from .workload import CONCURRENT_PROMPT, SHORT_PROMPT, Workload, context_prompt, prompt


def make_peer(spec: dict[str, Any], max_len: int, max_seqs: int):
    peer, opts = spec["peer"], spec.get("options", {})
    if peer == "tvmlm":
        from .peers_tvmlm import TvmlmPeer

        return TvmlmPeer(spec["model"], spec["threads"], opts.get("kv_dtype"), max_len, max_seqs)
    if peer == "llama.cpp":
        from .peers_llama import LlamaCppPeer

        return LlamaCppPeer(spec["model"], spec["threads"], opts.get("flash_attn", "auto"), max_len, max_seqs)
    if peer == "transformers":
        from .peers_transformers import TransformersPeer

        return TransformersPeer(spec["model"], spec["threads"], max_len, max_seqs)
    raise ValueError(f"unknown peer {peer!r}")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_single(spec: dict[str, Any], w: Workload) -> dict[str, Any]:
    window = spec.get("window") or 1 << 30
    fits = lambda n: n + w.decode_tokens + 8 <= window  # noqa: E731 - model's context permitting
    slots = min(w.max_len(), window)
    peer = make_peer(spec, slots, 1)
    out: dict[str, Any] = {"load_warm_s": peer.load_s, **peer.info}
    peer.prefill_seconds(prompt(SHORT_PROMPT, peer.vocab, seed=99))  # warm-up: thread pools, caches
    for n in w.prefill:
        if fits(n):
            out[f"prefill_{n}_tok_s"] = n / peer.prefill_seconds(prompt(n, peer.vocab, seed=100 + n))
    for i, c in enumerate(w.contexts):
        if not fits(c):
            continue
        n = max(w.decode_tokens, w.check_tokens) if i == 0 else w.decode_tokens
        tokens, rate = peer.decode(context_prompt(c, peer.vocab), n)
        out[f"decode_ctx{c}_tok_s"] = rate
        if i == 0:
            out["greedy_tokens"] = tokens[: w.check_tokens]
            out["greedy_context"] = c
    peer.close()
    out[f"rss_ctx{slots}_mb"] = _peak_rss_mb()  # keyed by context size: the KV cache is part of it
    return out


def run_concurrent(spec: dict[str, Any], w: Workload) -> dict[str, Any]:
    """Generated tokens/s with the prefills included, and in the decode phase alone: (n - 1)
    tokens per sequence over the time n tokens take beyond 1 token (fresh prompts for each, so
    no prefix-cache hit)."""
    c, n = w.concurrency, w.decode_tokens
    peer = make_peer(spec, CONCURRENT_PROMPT + n + 16, c)
    peer.concurrent([prompt(CONCURRENT_PROMPT, peer.vocab, seed=3000 + i) for i in range(c)], 2)  # warm-up
    first = peer.concurrent([prompt(CONCURRENT_PROMPT, peer.vocab, seed=2000 + i) for i in range(c)], 1)
    whole = peer.concurrent([prompt(CONCURRENT_PROMPT, peer.vocab, seed=1000 + i) for i in range(c)], n)
    out = {f"concurrent_{c}_tok_s": c * n / whole, **peer.info}
    if n > 1 and whole > first:
        out[f"concurrent_{c}_decode_tok_s"] = c * (n - 1) / (whole - first)
    peer.close()
    return out


def run_cold(spec: dict[str, Any], w: Workload) -> dict[str, Any]:
    from .peers_tvmlm import cold_load

    out = cold_load(spec["model"], spec["threads"], spec.get("options", {}).get("kv_dtype"), min(w.max_len(), spec.get("window") or 1 << 30))
    return {"load_cold_s": out.pop("load_s"), **out}


def main() -> None:
    spec = json.loads(sys.argv[1])
    w = Workload(**spec["workload"])
    run = {"single": run_single, "concurrent": run_concurrent, "cold": run_cold}[spec["kind"]]
    print("BENCH_RESULT " + json.dumps(run(spec, w)), flush=True)


if __name__ == "__main__":
    main()
