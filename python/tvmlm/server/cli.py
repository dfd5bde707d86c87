"""`tvmlm serve [MODEL] [--host --port --device --mode --api-key --served-model-name ...]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, "
                                   "/v1/completions, /v1/models, /health, /metrics).")
    p.add_argument("model", nargs="?",
                   help="HF model directory, .gguf file or compiled package (default: SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
    p.add_argument("--mode", default="server", choices=["local", "interactive", "server"],
                   help="engine preset (default: server: as many sequences as memory allows)")
    p.add_argument("--api-key", default=os.environ.get("TVMLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $TVMLM_API_KEY, else none)")
    p.add_argument("--served-model-name", help="the model name clients use (default: the model's file name)")
    p.add_argument("--shutdown-timeout", type=float, default=5.0,
                   help="seconds in-flight requests get to finish on SIGTERM/Ctrl-C before they are aborted")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest request body in bytes (413 above; default: 8 MiB)")
    p.add_argument("--max-num-sequence", type=int, help="concurrent sequences (default: from --mode)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from .run import ServeOptions, serve
    except ImportError as exc:
        print(f"tvmlm serve: error: {exc}; install the server's packages with: pip install 'tvmlm[serve]'",
              file=sys.stderr)
        return 1
    from ..async_engine import AsyncEngine
    from ..config import EngineConfig
    from ..errors import TvmlmError

    if args.model is None:
        from ..default_model import default_model_path

        args.model = str(default_model_path())
    config = EngineConfig(max_num_sequence=args.max_num_sequence) if args.max_num_sequence else None
    try:
        engine = AsyncEngine(args.model, device=args.device, mode=args.mode, engine_config=config)
    except TvmlmError as exc:
        print(f"tvmlm serve: error: {exc}", file=sys.stderr)
        return 1
    options = ServeOptions(host=args.host, port=args.port, api_key=args.api_key,
                           served_model_name=args.served_model_name, shutdown_timeout=args.shutdown_timeout)
    if args.max_body_bytes is not None:
        options.max_body_bytes = args.max_body_bytes

    def listening(address: tuple[str, int], name: str) -> None:
        host, port = address
        host = f"[{host}]" if ":" in host else host
        print(f"tvmlm serve: {name!r} on http://{host}:{port}/v1", flush=True)

    try:
        serve(engine, options, on_listening=listening)
    finally:
        engine.terminate()
    print("tvmlm serve: stopped", flush=True)
    return 0
