"""Rounds of interleaved jobs: every peer variant measured once per round, in its own process.

This VM's figures drift by +-20% over minutes, so peers are never run one after the other in long
blocks: each round runs every (model, threads, variant) job, the variants' order alternating
between rounds (A B, B A, ...), and every figure is later reported as the median over rounds with
its spread. tvmlm's cold load (convert + compile on an empty cache) runs once per model and KV
dtype before the rounds; it leaves the warm cache the rounds load from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .workload import Workload


@dataclass(frozen=True)
class Variant:
    name: str
    peer: str  # tvmlm | llama.cpp | transformers
    options: dict = field(default_factory=dict, hash=False)


#: Every variant the harness knows. tvmlm-kv16 matches llama.cpp's f16 KV cache; tvmlm's default
#: KV dtype is bfloat16 for quantized weights on AVX-512 BF16 CPUs. llama.cpp runs with its default
#: flash attention ("auto") and with it off; the report takes the better one per figure.
VARIANTS = {v.name: v for v in (
    Variant("tvmlm", "tvmlm", {"kv_dtype": None}),
    Variant("tvmlm-kv16", "tvmlm", {"kv_dtype": "float16"}),
    Variant("tvmlm-kv32", "tvmlm", {"kv_dtype": "float32"}),
    Variant("llama.cpp", "llama.cpp", {"flash_attn": "auto"}),
    Variant("llama.cpp-fa-off", "llama.cpp", {"flash_attn": "off"}),
    Variant("transformers", "transformers", {}),
)}


def model_window(model: str) -> int | None:
    """The model's context length (tokens), from the GGUF header or config.json."""
    path = Path(model)
    try:
        if path.suffix == ".gguf":
            from tvmlm.weights.check_gguf import read_gguf_header

            meta = read_gguf_header(path).metadata
            arch = meta.get("general.architecture")
            return int(meta[f"{arch}.context_length"])
        cfg = json.loads((path / "config.json").read_text())
        return int(cfg.get("max_position_embeddings") or 0) or None
    except (OSError, KeyError, ValueError):
        return None


@dataclass
class Plan:
    models: list[str]
    variants: list[Variant]
    threads: list[int]
    workload: Workload
    rounds: int
    work_dir: Path  # compile caches (one per model and KV dtype) live here
    timeout: float = 1800.0


def run_job(spec: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """One job in a fresh interpreter; its result dict, or {"error": ...}."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "tvmlm.bench.worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            out = json.loads(line[len("BENCH_RESULT "):])
            out["job_s"] = time.perf_counter() - t0
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}


def _env(plan: Plan, model: str, variant: Variant, threads: int) -> dict[str, str]:
    env = os.environ.copy()
    env["TVM_NUM_THREADS"] = str(threads)  # TVM's pool is sized when the runtime starts
    env["OMP_NUM_THREADS"] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    if variant.peer == "tvmlm":
        env["TVMLM_CACHE_DIR"] = str(_cache_dir(plan, model, variant))
    return env


def _cache_dir(plan: Plan, model: str, variant: Variant) -> Path:
    kv = variant.options.get("kv_dtype") or "default"
    return plan.work_dir / f"cache-{Path(model).stem}-{kv}"


def run(plan: Plan, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every job's result, tagged with model, variant, threads, kind and round."""
    results: list[dict[str, Any]] = []
    windows = {m: model_window(m) for m in plan.models}

    def job(model: str, variant: Variant, threads: int, kind: str, rnd: int) -> None:
        spec = {"peer": variant.peer, "options": variant.options, "model": model, "threads": threads,
                "kind": "cold" if kind == "prepare" else kind, "window": windows[model], "workload": plan.workload.to_dict()}
        out = run_job(spec, _env(plan, model, variant, threads), plan.timeout)
        if kind == "prepare":
            out = {"prepare_seconds": out.pop("load_cold_s", None), **out}
        out.update(model=model, variant=variant.name, threads=threads, kind=kind, round=rnd)
        results.append(out)
        status = f"error: {out['error']}" if "error" in out else f"{out['job_s']:.1f} s"
        log(f"  round {rnd} {kind:10s} {variant.name:16s} t={threads} {Path(model).name}: {status}")

    # Cold loads: an empty cache per model and KV dtype (the rounds then load from it warm). A
    # cache left in --work-dir by an earlier run is only brought up to date ("prepare": compiles
    # again if tvmlm's sources changed since), and gives no cold figure.
    for model in plan.models:
        for variant in plan.variants:
            cache = _cache_dir(plan, model, variant)
            if variant.peer == "tvmlm":
                kind = "prepare" if cache.exists() else "cold"
                cache.mkdir(parents=True, exist_ok=True)
                job(model, variant, max(plan.threads), kind, 0)
    kinds = ["single"] + (["concurrent"] if plan.workload.concurrency > 1 else [])
    for rnd in range(plan.rounds):
        order = plan.variants if rnd % 2 == 0 else plan.variants[::-1]
        log(f"round {rnd + 1}/{plan.rounds}")
        for model in plan.models:
            for threads in plan.threads:
                for kind in kinds:
                    for variant in order:
                        job(model, variant, threads, kind, rnd)
    return results


def cleanup(plan: Plan) -> None:
    for model in plan.models:
        for variant in plan.variants:
            shutil.rmtree(_cache_dir(plan, model, variant), ignore_errors=True)
