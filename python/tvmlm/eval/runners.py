"""What produces next-token logits for every position of a window of token ids.

Each runner has `name` and `logits(ids) -> float32 [len(ids), vocab]` (row i: the distribution
after ids[:i + 1]) and `close()`. Every runner is given the same ids (from the reference tokenizer),
so positions compare exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def hf_source(model_path: str | Path) -> tuple[str, dict]:
    """(directory, from_pretrained kwargs) that make transformers read `model_path`: an HF model
    directory, or a .gguf file (which transformers dequantizes to float32)."""
    p = Path(model_path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), {"gguf_file": p.name}
    return str(p), {}


class Reference:
    """transformers in float32 on the same weights: the tokenizer and the reference logits."""

    name = "transformers f32"

    def __init__(self, model_path: str | Path, threads: int = 0) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        directory, kwargs = hf_source(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs).eval()

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """(token ids of `text` without special tokens, the prefix the tokenizer adds: BOS or [])."""
        plain = self.tokenizer(text, add_special_tokens=False).input_ids
        probe = self.tokenizer("a", add_special_tokens=False).input_ids
        special = self.tokenizer("a").input_ids
        prefix = special[: len(special) - len(probe)] if special[len(special) - len(probe):] == probe else []
        return plain, prefix

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()

    def close(self) -> None:
        self.model = None


class Tvmlm:
    """tvmlm's compiled model through `_core.Model`: the package `Engine` builds for this file and
    device (same library, same packed weights), or one compiled with `options` (a variant). Prefill
    returns every position's logits (`logit_rows`), in chunks of at most the compiled batch size."""

    def __init__(self, model_path: str | Path, name: str = "tvmlm", device: str = "cpu", options=None, threads: int = 0) -> None:
        from .. import _core
        from ..compile import device_compile_args, prepare_package, resolve_package
        from ..devices import resolve_device

        self.name = name
        dev = resolve_device(device)
        if options is None:
            pkg_dir, meta, _ = resolve_package(model_path, dev)
        else:
            kind, target = device_compile_args(dev)
            pkg = prepare_package(model_path, kind, options=options, target=target)
            pkg_dir, meta = pkg.path, pkg.metadata
        self.metadata = meta
        self.model = _core.Model(str(pkg_dir), f"{dev.kind}:{dev.index}", threads)
        self.chunk = min(int(meta["prefill_chunk_size"]), int(meta["max_batch_size"]))
        self.capacity = 0

    def logits(self, ids: list[int]) -> np.ndarray:
        if len(ids) > self.capacity:
            self.capacity = len(ids)
            self.model.create_kv_cache(1, self.capacity, self.chunk)
        self.model.add_sequence(0)
        try:
            pieces = [ids[i:i + self.chunk] for i in range(0, len(ids), self.chunk)]
            return np.concatenate([self.model.prefill([0], [p], [len(p)]) for p in pieces])
        finally:
            self.model.remove_sequence(0)

    def close(self) -> None:
        self.model = None


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on the same file, every position's logits kept (logits_all)."""

    name = "llama.cpp"

    def __init__(self, model_path: str | Path, ctx: int, threads: int = 0) -> None:
        from llama_cpp import Llama

        threads = threads or os.cpu_count() or 1
        self.llm = Llama(model_path=str(model_path), logits_all=True, n_ctx=ctx, n_batch=ctx, n_threads=threads,
                         n_threads_batch=threads, verbose=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None
