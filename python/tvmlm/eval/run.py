"""Evaluate one model file: the reference, tvmlm (and its variants) and llama.cpp on the same windows."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from .corpus import windows
from .metrics import Scores
from .runners import LlamaCpp, Reference, Tvmlm, llama_cpp_available

logger = logging.getLogger("tvmlm.eval")


def variant_options(name: str):
    """tvmlm builds besides the default one, to tell which approximation costs what:
    f32-kv / f16-kv: int8 activations, a float32 / float16 KV cache (the default KV cache is
    bfloat16 on CPUs that multiply bfloat16; llama.cpp's is float16); float-act: float32
    activations into dequantized weights, float32 KV cache."""
    from ..compile import CompileOptions

    options = {
        "f32-kv": CompileOptions(dtype=None, kv_dtype="float32"),
        "f16-kv": CompileOptions(dtype=None, kv_dtype="float16"),
        "float-act": CompileOptions(dtype=None, int8_activations=False),
    }
    if name not in options:
        raise ValueError(f"unknown variant {name!r}; choose from {sorted(options)}")
    return options[name]


def _describe(runner) -> dict:
    if isinstance(runner, Tvmlm):
        meta = runner.metadata
        return {"weight_formats": meta.get("weight_formats"), "dtype": meta.get("dtype"), "kv_dtype": meta.get("kv_dtype"),
                "tvmlm_version": meta.get("tvmlm_version")}
    if isinstance(runner, LlamaCpp):
        import llama_cpp

        return {"llama_cpp_python": getattr(llama_cpp, "__version__", "unknown")}
    return {}


def evaluate_file(
    model: str | Path, text: str, *, ctx: int, tokens: int, threads: int = 0, device: str = "cpu",
    variants: tuple[str, ...] = (), llama_cpp: bool | None = None, progress=sys.stderr,
) -> dict:
    """Metrics of every engine on `model` against transformers float32, over the first `tokens`
    tokens of `text` in windows of `ctx`. llama_cpp: None = when importable and `model` is a GGUF."""
    model = Path(model).expanduser()
    ref = Reference(model, threads)
    ids, prefix = ref.encode(text)
    wins = windows(ids, ctx, tokens, prefix)
    runners = [Tvmlm(model, device=device, threads=threads)]
    runners += [Tvmlm(model, name=f"tvmlm {v}", device=device, options=variant_options(v), threads=threads) for v in variants]
    if llama_cpp is None:
        llama_cpp = llama_cpp_available() and model.suffix == ".gguf"
    if llama_cpp:
        runners.append(LlamaCpp(model, ctx, threads))
    scores = {r.name: Scores() for r in [ref, *runners]}
    try:
        for i, window in enumerate(wins):
            ref_logits = ref.logits(window)[:-1]  # the last row predicts past the window
            targets = np.asarray(window[1:])
            scores[ref.name].add(ref_logits, ref_logits, targets)
            for runner in runners:
                logits = runner.logits(window)[:-1]
                if logits.shape != ref_logits.shape:
                    raise ValueError(f"{runner.name} returned logits {logits.shape}, the reference {ref_logits.shape}")
                scores[runner.name].add(logits, ref_logits, targets)
            if progress is not None:
                print(f"{model.name}: window {i + 1}/{len(wins)} ({len(window)} tokens)", file=progress, flush=True)
        details = {r.name: _describe(r) for r in runners}
    finally:
        for r in [ref, *runners]:
            r.close()
    return {
        "model": str(model), "file": model.name, "ctx": ctx, "windows": len(wins), "prefix": prefix,
        "results": {name: {**s.as_dict(), **details.get(name, {})} for name, s in scores.items()},
    }
