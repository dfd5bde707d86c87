"""GGUF files of several quantization types, each run by a warm Engine in a fresh process: the
packed params file against the GGUF's tensor bytes (and float32), peak RSS, decode tok/s and the
greedy answer to one question. Not a test: a check on real llama.cpp files (weights/gguf_blocks.py).

    python tools/check_gguf_quants.py /work/models/smollm2-135m-{q4_k_m,q6_k,q5_k_m,q4_0,q8_0}.gguf

Each file is compiled first (in this process, into $TVMLM_CACHE_DIR), so the measuring process
only loads. Timings from a loaded machine are indicative only.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

QUESTION = "What is the capital of France?"


def measure(path: str, max_tokens: int, quantization: str | None = None) -> dict:
    """In a fresh process: a warm Engine's peak RSS, decode tok/s and greedy answer."""
    from tvmlm import Engine, EngineConfig

    def rss_mb(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return float("nan")

    start = time.perf_counter()
    with Engine(path, device="cpu", mode="interactive", engine_config=EngineConfig(quantization=quantization)) as engine:
        ready = time.perf_counter() - start
        messages = [{"role": "user", "content": QUESTION}]
        answer = engine.chat.completions.create(messages=messages, max_tokens=32, temperature=0).choices[0].message.content
        # decode speed: chunks after the first, over the time after the first
        stamps = []
        for chunk in engine.chat.completions.create(
            messages=[{"role": "user", "content": "Write a long story about a dragon."}],
            max_tokens=max_tokens, temperature=0, stream=True,
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter())
        tok_s = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
        return {"ready_s": ready, "answer": answer, "decode_tok_s": tok_s, "decode_chunks": len(stamps),
                "rss_mb": rss_mb("VmRSS"), "peak_rss_mb": rss_mb("VmHWM")}


def describe(path: str, quantization: str | None = None) -> dict:
    """Compile (cached) and size the package against the GGUF."""
    import gguf

    from tvmlm.compile import CompileOptions, prepare_package

    reader = gguf.GGUFReader(path)
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    f32_bytes = 4 * sum(int(t.n_elements) for t in reader.tensors)
    package = prepare_package(path, "cpu", options=CompileOptions(quantization=quantization), progress=False)
    params = (package.path / "params.safetensors").stat().st_size
    formats = collections.Counter(package.metadata["weight_formats"].values())
    return {"file": Path(path).name, "types": dict(types), "gguf_tensor_mb": tensor_bytes / 1e6,
            "params_mb": params / 1e6, "params_vs_gguf": params / tensor_bytes, "f32_mb": f32_bytes / 1e6,
            "plan": package.metadata["weight_formats"] if len(formats) <= 3 else dict(formats)}


def logits_vs_f32(path: str, steps: int = 32) -> dict:
    """Teacher-forced logits of the packed package against the dequantize-to-float32 one on the
    question's chat prompt: relative RMS, and how many greedy tokens agree before they part."""
    import numpy as np
    from tokenizers import Tokenizer

    from tvmlm import _core
    from tvmlm.compile import CompileOptions, prepare_package

    packed = prepare_package(path, "cpu", progress=False)
    dense = prepare_package(path, "cpu", options=CompileOptions(quantization="none"), progress=False)
    tok = Tokenizer.from_file(str(packed.path / "tokenizer.json"))
    text = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    prompt = tok.encode(text, add_special_tokens=False).ids

    def run(package, forced=None):
        model = _core.Model(str(package.path), "cpu:0", 2)
        model.create_kv_cache(1, 512, 128)
        model.add_sequence(0)
        logits = [model.prefill([0], [prompt])[0]]
        tokens = [int(logits[-1].argmax())]
        for i in range(steps):
            logits.append(model.decode([0], [forced[i] if forced else tokens[-1]])[0])
            tokens.append(int(logits[-1].argmax()))
        return np.stack(logits), tokens

    ref, ref_tokens = run(dense)
    got, got_tokens = run(packed, forced=ref_tokens)
    rms = float(np.sqrt(((got - ref) ** 2).mean() / (ref**2).mean()))
    agree = next((i for i, (a, b) in enumerate(zip(got_tokens, ref_tokens)) if a != b), len(ref_tokens))
    return {"forced_rel_rms_vs_f32": rms, "forced_top1_agree": agree, "f32_answer": tok.decode(ref_tokens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--f32", action="store_true", help="run the dequantize-to-float32 path instead (baseline)")
    ap.add_argument("--vs-f32", action="store_true", help="also: teacher-forced logits against the float32 path")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    quantization = "none" if args.f32 else None
    if args.measure:
        print(json.dumps(measure(args.files[0], args.max_tokens, quantization)))
        return
    for path in args.files:
        row = describe(path, quantization)
        child = [sys.executable, __file__, "--measure", "--max-tokens", str(args.max_tokens), path]
        out = subprocess.run(child + (["--f32"] if args.f32 else []), capture_output=True, text=True, check=True)
        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
        if args.vs_f32 and not args.f32:
            row.update(logits_vs_f32(path))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
