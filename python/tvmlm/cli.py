"""The `tvmlm` command: chat with or complete from a model, streaming tokens as they come.

    tvmlm chat "What is the capital of France?"      # one answer
    tvmlm chat                                       # a REPL (empty line or Ctrl-D ends it)
    tvmlm complete "Once upon a time" --max-tokens 32
    tvmlm serve [MODEL] --port 8000                  # an OpenAI-compatible HTTP server
    tvmlm eval model.gguf --tokens 2048 --ctx 512    # perplexity / KL against float32
"""

from __future__ import annotations

import argparse
import logging
import sys

from .default_model import default_model_path

#: Sampling for `tvmlm chat` where the model's generation_config.json sets nothing: llama-cpp-python's
#: create_chat_completion defaults (0.3.x: temperature 0.2, top_k 40, top_p 0.95, min_p 0.05), with
#: the repeat penalty llama.cpp used by default until 2024 (1.1; 0.3.x has 1.0) as a repeat guard.
#: Greedy decoding of small models loops; on SmolLM2-135M's "What is the capital of France?" the
#: penalty turns 1 in 16 answers naming Paris into 45 in 48 (tests/test_cli_chat.py).
CHAT_SAMPLING = {"temperature": 0.2, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repetition_penalty": 1.1}
SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvmlm", description="LLM inference on TVM-compiled models")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("chat", "chat with a model (a REPL when no prompt is given)"), ("complete", "complete a text prompt")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("prompt", nargs="?", help="the prompt; omit it for a REPL (chat only)")
        p.add_argument("--model", help="HF model directory, .gguf file or compiled package (default: SmolLM2-135M-Instruct)")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
        p.add_argument("--mode", default="interactive", choices=["local", "interactive", "server"])
        p.add_argument("--max-tokens", type=int, default=256 if name == "chat" else 64)
        p.add_argument("--temperature", type=float, help="0 = greedy (default: the model's "
                       "generation_config, else llama.cpp's chat default 0.2)")
        p.add_argument("--top-p", type=float)
        p.add_argument("--top-k", type=int)
        p.add_argument("--min-p", type=float)
        p.add_argument("--repetition-penalty", type=float)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--system", help="system prompt (chat)")
        p.add_argument("-v", "--verbose", action="store_true", help="log engine setup (INFO)")
    from .server.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
    bench = sub.add_parser("bench", help="benchmark tvmlm against peers (see python -m tvmlm.bench --help)")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    from .eval.__main__ import parser as eval_parser

    evaluate = eval_parser()
    sub.add_parser("eval", parents=[evaluate], add_help=False, help="perplexity and KL against float32",
                   description=evaluate.description)
    return parser


class RepeatGuard:
    """Detects an answer caught in a loop: its text ending in the same unit (1-64 characters)
    repeated at least `repeats` times over at least `min_span` characters."""

    def __init__(self, repeats: int = 4, min_span: int = 48, max_unit: int = 64) -> None:
        self.repeats, self.min_span, self.max_unit = repeats, min_span, max_unit
        self.text = ""

    def feed(self, piece: str) -> bool:
        """Add streamed text; True once the text loops."""
        self.text = (self.text + piece)[-(self.max_unit * self.repeats + self.min_span):]
        for unit in range(1, self.max_unit + 1):
            count = max(self.repeats, -(-self.min_span // unit))
            span = unit * count
            if span > len(self.text):
                continue
            if self.text[-span:] == self.text[-unit:] * count:
                return True
        return False


def _print_stream(chunks, out, guard: RepeatGuard | None = None) -> str:
    text = []
    try:
        for chunk in chunks:
            piece = chunk.choices[0].delta.content if hasattr(chunk.choices[0], "delta") else chunk.choices[0].text
            if piece:
                out.write(piece)
                out.flush()
                text.append(piece)
                if guard is not None and guard.feed(piece):
                    break  # closing the stream aborts the request
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    out.write("\n")
    return "".join(text)


def chat_sampling(args: argparse.Namespace, model_defaults: dict) -> dict:
    """Sampling for `tvmlm chat`: flags first, then the model's generation_config values (which
    the engine applies to unset fields), then llama.cpp's chat defaults."""
    sampling = {k: v for k, v in CHAT_SAMPLING.items() if k not in model_defaults}
    sampling.update({k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k) is not None})
    return sampling


def chat_answer(engine, history: list[dict], sampling: dict, out) -> str:
    """Stream one answer to `history` to `out`, stopping a looping answer early; return it."""
    chunks = engine.chat.completions.create(messages=history, stream=True, **sampling)
    return _print_stream(chunks, out, RepeatGuard())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from .bench.__main__ import main as bench_main

        return bench_main(args.args)
    if args.command == "eval":
        from .eval.__main__ import run as eval_run

        return eval_run(args)
    if args.command == "serve":
        from .server.cli import main as serve_main

        return serve_main(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command == "complete" and not args.prompt:
        raise SystemExit("tvmlm complete needs a prompt")
    model = args.model or str(default_model_path())

    from . import Engine
    from .errors import TvmlmError

    try:
        with Engine(model, device=args.device, mode=args.mode) as engine:
            sampling = {"max_tokens": args.max_tokens, "seed": args.seed}
            if args.command == "complete":
                sampling.update({k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k) is not None})
                chunks = engine.completions.create(prompt=args.prompt, stream=True, **sampling)  # validates first
                sys.stdout.write(args.prompt)
                _print_stream(chunks, sys.stdout)
                return 0
            sampling.update(chat_sampling(args, engine.sampling_defaults))
            history = [{"role": "system", "content": args.system}] if args.system else []
            prompts = [args.prompt] if args.prompt else None
            while True:
                if prompts is not None:
                    if not prompts:
                        return 0
                    user = prompts.pop()
                else:
                    try:
                        user = input(">>> ")
                    except EOFError:
                        print()
                        return 0
                    if not user.strip():
                        return 0
                history.append({"role": "user", "content": user})
                answer = chat_answer(engine, history, sampling, sys.stdout)
                history.append({"role": "assistant", "content": answer})
    except TvmlmError as exc:
        print(f"tvmlm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
