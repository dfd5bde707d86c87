"""Command line of the quality gate (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def parser() -> argparse.ArgumentParser:
    """The options (also `tvmlm eval`'s, which takes this parser as its parent)."""
    p = argparse.ArgumentParser(prog="tvmlm eval", description="perplexity and KL divergence of tvmlm (and llama.cpp) "
                                "against transformers float32 on the same weights")
    p.add_argument("models", nargs="+", help=".gguf files or HF model directories")
    p.add_argument("--tokens", type=int, default=2048, help="corpus tokens to evaluate (default 2048)")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--corpus", help="a UTF-8 text file (default: the shipped public-domain corpus)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for every engine (default: all)")
    p.add_argument("--device", default="cpu", help="tvmlm's device: cpu or cuda[:i] (default cpu)")
    p.add_argument("--variant", action="append", default=[], choices=["f32-kv", "f16-kv", "float-act"],
                   help="also evaluate a tvmlm build with a float32 or float16 KV cache (f32-kv, f16-kv) or "
                   "float32 activations and KV cache (float-act); repeatable")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp even when it is installed")
    p.add_argument("--json", help="write the numbers to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .corpus import read_corpus
    from .report import markdown_table
    from .run import evaluate_file

    text = read_corpus(args.corpus)
    files = []
    for model in args.models:
        files.append(evaluate_file(model, text, ctx=args.ctx, tokens=args.tokens, threads=args.threads,
                                   device=args.device, variants=tuple(args.variant),
                                   llama_cpp=False if args.no_llama_cpp else None))
        if args.json:  # after each file, so a long run keeps what it has
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"tokens": args.tokens, "ctx": args.ctx, "corpus": args.corpus or "tvmlm/eval/corpus.txt",
                           "files": files}, f, indent=2)
    print(markdown_table(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
