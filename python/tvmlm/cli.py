"""The `tvmlm` command: chat with or complete from a model, streaming tokens as they come.

    tvmlm chat "What is the capital of France?"      # one answer
    tvmlm chat                                       # a REPL (empty line or Ctrl-D ends it)
    tvmlm complete "Once upon a time" --max-tokens 32
    tvmlm serve [MODEL] --port 8000                  # an OpenAI-compatible HTTP server
"""

from __future__ import annotations

import argparse
import logging
import sys

from .default_model import default_model_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvmlm", description="LLM inference on TVM-compiled models")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("chat", "chat with a model (a REPL when no prompt is given)"), ("complete", "complete a text prompt")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("prompt", nargs="?", help="the prompt; omit it for a REPL (chat only)")
        p.add_argument("--model", help="HF model directory, .gguf file or compiled package (default: SmolLM2-135M-Instruct)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda[:i], metal[:i] or vulkan[:i] (default: auto)")
        p.add_argument("--mode", default="interactive", choices=["local", "interactive", "server"])
        p.add_argument("--max-tokens", type=int, default=256 if name == "chat" else 64)
        p.add_argument("--temperature", type=float, default=0.0)
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--system", help="system prompt (chat)")
        p.add_argument("-v", "--verbose", action="store_true", help="log engine setup (INFO)")
    from .server.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
    bench = sub.add_parser("bench", help="benchmark tvmlm against peers (see python -m tvmlm.bench --help)")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _print_stream(chunks, out) -> str:
    text = []
    for chunk in chunks:
        piece = chunk.choices[0].delta.content if hasattr(chunk.choices[0], "delta") else chunk.choices[0].text
        if piece:
            out.write(piece)
            out.flush()
            text.append(piece)
    out.write("\n")
    return "".join(text)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from .bench.__main__ import main as bench_main

        return bench_main(args.args)
    if args.command == "serve":
        from .server.cli import main as serve_main

        return serve_main(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command == "complete" and not args.prompt:
        raise SystemExit("tvmlm complete needs a prompt")
    model = args.model or str(default_model_path())

    from . import Engine
    from .errors import TvmlmError

    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
    try:
        with Engine(model, device=args.device, mode=args.mode) as engine:
            if args.command == "complete":
                chunks = engine.completions.create(prompt=args.prompt, stream=True, **sampling)  # validates first
                sys.stdout.write(args.prompt)
                _print_stream(chunks, sys.stdout)
                return 0
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
                answer = _print_stream(engine.chat.completions.create(messages=history, stream=True, **sampling), sys.stdout)
                history.append({"role": "assistant", "content": answer})
    except TvmlmError as exc:
        print(f"tvmlm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
