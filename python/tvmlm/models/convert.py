"""HF tensors -> the package's params.safetensors (no tvm import: runs on the warm path too)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .llama_config import LlamaConfig


def convert_hf_tensors(cfg: LlamaConfig, tensors: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
    """Map Hugging Face parameter names onto this module's (fused qkv and gate_up) names.

    Consumes `(hf_name, array)` pairs one at a time, holding back only the pieces of a fused
    weight until all of its parts have arrived, so peak memory stays near one layer.
    """
    pending: dict[str, dict[str, np.ndarray]] = {}
    fused = {
        "q_proj": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
        "k_proj": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
        "v_proj": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
        "gate_proj": ("gate_up_proj", ("gate_proj", "up_proj")),
        "up_proj": ("gate_up_proj", ("gate_proj", "up_proj")),
    }
    for name, array in tensors:
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if "rotary_emb" in name:
            continue
        parts = name.split(".")
        # e.g. model.layers.3.self_attn.q_proj.weight -> part "q_proj", kind "weight"
        if len(parts) >= 3 and parts[-2] in fused:
            target, members = fused[parts[-2]]
            prefix = ".".join(parts[:-2])
            key = f"{prefix}.{target}.{parts[-1]}"
            group = pending.setdefault(key, {})
            group[parts[-2]] = array
            if all(m in group for m in members):
                yield key, np.concatenate([group[m] for m in members], axis=0)
                del pending[key]
            continue
        yield name, array
    if pending:
        raise ValueError(f"incomplete fused weights (missing parts): {sorted(pending)}")


def convert_params(loaded, metadata: dict[str, Any], out_path: Path, *, progress: bool = True) -> None:
    """Convert the model's HF tensors to the package's params.safetensors, checking every shape."""
    from safetensors.numpy import save_file

    cfg = LlamaConfig.from_hf(loaded.config)
    expected = {p["name"]: p for p in metadata["params"]}
    out: dict[str, np.ndarray] = {}
    if progress:
        from ..compile import progress_bar  # tqdm (+ compile's filelock): only when a bar is shown

        bar_cm = progress_bar(total=len(expected), desc="convert weights", unit="tensor")
    else:
        bar_cm = contextlib.nullcontext(_NoBar())
    with bar_cm as bar:
        for name, array in convert_hf_tensors(cfg, loaded.tensors()):
            spec = expected.get(name)
            if spec is None:
                raise ValueError(f"weight {name!r} has no place in the {cfg.model_type} model")
            if list(array.shape) != spec["shape"]:
                raise ValueError(f"weight {name!r} has shape {list(array.shape)}, the model expects {spec['shape']}")
            out[name] = np.ascontiguousarray(array.astype(spec["dtype"], copy=False))
            bar.update()
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ValueError(f"weights missing from the checkpoint: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    save_file(out, str(out_path))


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass
