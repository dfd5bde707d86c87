"""The Markdown table of evaluation results."""

from __future__ import annotations


def markdown_table(files: list[dict]) -> str:
    lines = ["| file | engine | tokens | ppl | KL(ref ‖ engine) nats | max KL | top-1 agree |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for f in files:
        for name, r in f["results"].items():
            lines.append(f"| {f['file']} | {name} | {r['tokens']} | {r['ppl']:.3f} | {r['kl']:.5f} | {r['kl_max']:.3f} | "
                         f"{100 * r['top1']:.1f}% |")
    return "\n".join(lines)
