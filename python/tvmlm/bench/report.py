"""Turn the rounds' samples into medians with spreads, ratios, a Markdown table and a plot.

Ratios are tvmlm / peer. For speeds (tok/s) > 1 means tvmlm is faster; for load times and peak
RSS (lower is better) the same tvmlm / peer ratio is printed, so > 1 there means tvmlm is worse.
Every ratio where tvmlm is worse is marked. llama.cpp's reference for each figure is the better of
its settings (flash attention auto / off) on that figure's median, named next to the ratio.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from .workload import match_prefix, summary

LLAMA = "llama.cpp"
FA_NAMES = {"llama.cpp": "fa auto", "llama.cpp-fa-off": "fa off"}


def metric_order(key: str) -> tuple:
    """(group, number, key) so that rows come out as load, prefill, decode, concurrency, memory."""
    groups = ["load_cold_s", "load_warm_s", "prefill_", "decode_ctx", "concurrent_", "rss_ctx"]
    g = next(i for i, p in enumerate(groups) if key.startswith(p))
    digits = "".join(ch for ch in key if ch.isdigit())
    return g, int(digits) if digits else 0, key


def metric_label(key: str) -> tuple[str, bool]:
    """(row label, higher is better)."""
    if key == "load_cold_s":
        return "load, cold: compile + load (s)", False
    if key == "load_warm_s":
        return "load, warm: fresh process (s)", False
    n = metric_order(key)[1]
    if key.startswith("rss_ctx"):
        return f"peak RSS, serving a {n}-token context (MB)", False
    if key.startswith("prefill_"):
        return f"prefill {n} tokens (tok/s)", True
    if key.startswith("decode_ctx"):
        return f"decode at context {n} (tok/s)", True
    if key.endswith("_decode_tok_s"):
        return f"{n} concurrent, decode phase (tok/s)", True
    return f"{n} concurrent, generated incl. prefills (tok/s)", True


def _metric_keys(r: dict[str, Any]) -> list[str]:
    return [k for k in r if k.endswith(("_s", "_tok_s", "_mb")) and k != "job_s" and not k.startswith("greedy")]


def aggregate(results: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    """{(model, threads): {variant: {metric: summary}}}; llama.cpp and transformers compile
    nothing, so their cold load is their (warm) load, shown where tvmlm has a cold load."""
    samples: dict[tuple[str, int], dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in results:
        if "error" in r:
            continue
        for k in _metric_keys(r):
            samples[(r["model"], r["threads"])][r["variant"]][k].append(float(r[k]))
    out: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for group, by_variant in samples.items():
        out[group] = {}
        compiled = any("load_cold_s" in m for v, m in by_variant.items() if v.startswith("tvmlm"))
        for variant, metrics in by_variant.items():
            if compiled and not variant.startswith("tvmlm") and "load_warm_s" in metrics:
                metrics.setdefault("load_cold_s", list(metrics["load_warm_s"]))
            out[group][variant] = {k: summary(v) for k, v in metrics.items()}
    return out


def ratio(ours: dict[str, Any] | None, peers: dict[str, dict[str, Any]], higher: bool) -> tuple[float, str] | None:
    """(tvmlm median / best peer median, that peer's name), or None if either is missing."""
    if not ours or "median" not in ours:
        return None
    cand = [(s["median"], name) for name, s in peers.items() if s and "median" in s and s["median"] > 0]
    if not cand:
        return None
    best, name = (max if higher else min)(cand)
    return ours["median"] / best, name


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def cell(s: dict[str, Any] | None) -> str:
    if not s or "median" not in s:
        return ""
    if s["n"] == 1:
        return f"{_fmt(s['median'])} (n=1)"
    return f"{_fmt(s['median'])} ({_fmt(s['min'])}-{_fmt(s['max'])})"


def ratio_cell(r: tuple[float, str] | None, higher: bool) -> str:
    if r is None:
        return ""
    value, name = r
    worse = value < 1 if higher else value > 1
    text = f"{value:.2f}x"
    if name in FA_NAMES:
        text += f" ({FA_NAMES[name]})"
    return f"**{text} worse**" if worse else text


def peer_families(variants: list[str]) -> dict[str, list[str]]:
    fams: dict[str, list[str]] = defaultdict(list)
    for v in variants:
        if not v.startswith("tvmlm"):
            fams[LLAMA if v.startswith(LLAMA) else v].append(v)
    return fams


def table(results: list[dict[str, Any]], variants: list[str]) -> str:
    """One Markdown table: a row per (model, threads, metric); medians (min-max over rounds)."""
    agg = aggregate(results)
    ours = [v for v in variants if v.startswith("tvmlm")]
    fams = peer_families(variants)
    ratio_cols = [(o, fam) for o in ours for fam in fams]
    head = ["model", "threads", "metric", *variants, *[f"{o}/{fam}" for o, fam in ratio_cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for (model, threads) in sorted(agg, key=lambda g: (Path(g[0]).name, g[1])):
        by_v = agg[(model, threads)]
        keys = sorted({k for v in by_v.values() for k in v}, key=metric_order)
        for k in keys:
            label, higher = metric_label(k)
            row = [Path(model).name, str(threads), label] + [cell(by_v.get(v, {}).get(k)) for v in variants]
            for o, fam in ratio_cols:
                r = ratio(by_v.get(o, {}).get(k), {p: by_v.get(p, {}).get(k) for p in fams[fam]}, higher)
                row.append(ratio_cell(r, higher))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def token_checks(results: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    """Greedy tokens of every variant against the first variant's (and transformers' when run):
    the shared prefix length, per model, thread count and context (round 0's tokens; `stable`
    says whether every round produced the same)."""
    by: dict[tuple[str, int, int], dict[str, list[list[int]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.get("kind") == "single" and "greedy_tokens" in r:
            by[(r["model"], r["threads"], r.get("greedy_context", 0))][r["variant"]].append(r["greedy_tokens"])
    out = []
    for (model, threads, context), toks in sorted(by.items()):
        refs = [v for v in (variants[0], "transformers") if v in toks]
        for v in variants:
            if v not in toks:
                continue
            row = {"model": Path(model).name, "threads": threads, "context": context, "variant": v,
                   "tokens": toks[v][0], "stable": all(t == toks[v][0] for t in toks[v])}
            for ref in refs:
                if ref != v:
                    row[f"match_vs_{ref}"] = f"{match_prefix(toks[v][0], toks[ref][0])}/{len(toks[ref][0])}"
            out.append(row)
    return out


def token_table(checks: list[dict[str, Any]]) -> str:
    refs = sorted({k for c in checks for k in c if k.startswith("match_vs_")})
    lines = ["| model | threads | context | variant | " + " | ".join(f"shared prefix with {r[9:]}" for r in refs) + " | same every round |",
             "|---|---|---|---|" + "---:|" * (len(refs) + 1)]
    for c in checks:
        lines.append(f"| {c['model']} | {c['threads']} | {c['context']} | {c['variant']} | "
                     + " | ".join(c.get(r, "-") for r in refs) + f" | {'yes' if c['stable'] else 'NO'} |")
    return "\n".join(lines)


def errors(results: list[dict[str, Any]]) -> list[str]:
    return [f"{r['variant']} {r['kind']} t={r['threads']} round {r['round']} {Path(r['model']).name}: {r['error']}"
            for r in results if "error" in r]


def plot(results: list[dict[str, Any]], variants: list[str], path: str) -> None:
    """Bars of tvmlm's advantage over llama.cpp's better setting per figure and model (> 1: tvmlm
    better; load and RSS drawn as peer / tvmlm so the direction is the same), at the most threads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(results)
    ours = next((v for v in variants if v.startswith("tvmlm")), None)
    llama = peer_families(variants).get(LLAMA, [])
    top = max((t for _, t in agg), default=1)
    models = sorted({m for m, t in agg if t == top}, key=lambda m: Path(m).name)
    keys = sorted({k for (m, t), by in agg.items() if t == top for v in by.values() for k in v}, key=metric_order)
    fig, ax = plt.subplots(figsize=(max(8, len(keys) * 0.9), 4.5))
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        by_v = agg[(model, top)]
        vals = []
        for k in keys:
            higher = metric_label(k)[1]
            r = ratio(by_v.get(ours, {}).get(k), {p: by_v.get(p, {}).get(k) for p in llama}, higher) if ours else None
            vals.append(0 if r is None else (r[0] if higher else 1 / r[0]))
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=Path(model).stem)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(keys))],
                  [metric_label(k)[0] for k in keys], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"{ours} advantage over llama.cpp\n(>1: {ours} better; log scale)", fontsize=8)
    ax.set_title(f"medians over rounds, {top} threads", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
