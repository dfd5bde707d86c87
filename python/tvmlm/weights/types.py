"""What the weight loaders (hf.py, gguf.py) produce: `LoadedModel`, and the architectures they read."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..models.llama_config import SUPPORTED_ARCHITECTURES as _MODEL_ARCHITECTURES
from .gguf_archs import HF_ARCH as GGUF_HF_ARCH

# HF `architectures[0]` values the model definition implements (its table, models/llama_config.py).
SUPPORTED_ARCHITECTURES = tuple(_MODEL_ARCHITECTURES)
# `general.architecture` values of GGUF files mapped to those names (the table in gguf_archs.py).
SUPPORTED_GGUF_ARCHITECTURES = tuple(GGUF_HF_ARCH)


@dataclasses.dataclass
class LoadedModel:
    """Weights and tokenizer of one model, read lazily from its source files."""

    config: dict[str, Any]
    """HF-style config.json dict (synthesized from metadata for GGUF)."""
    source_files: list[str]
    """Every file the weights/config/tokenizer come from (for cache hashing)."""
    source_kind: str
    """"hf" or "gguf"."""
    path: str
    _iter_tensors: Callable[..., Iterator[tuple[str, np.ndarray]]] = dataclasses.field(repr=False)
    _write_tokenizer: Callable[[Path], None] = dataclasses.field(repr=False)
    packed_formats: dict[str, str] = dataclasses.field(default_factory=dict)
    """hf_name -> "q4_1" | "q8_0" for tensors stored block-quantized that can stay packed."""
    stored_dtypes: frozenset[str] = frozenset()
    """The float dtypes an HF checkpoint's safetensors store ("BF16", "F16", "F32")."""

    def tensors(self, keep_packed: Callable[[str], bool] | None = None) -> Iterator[tuple[str, Any]]:
        """Yield `(hf_name, float32 array)` one tensor at a time; a tensor listed in
        `packed_formats` for which `keep_packed(name)` is true comes as a `PackedWeight` instead."""
        if keep_packed is None or not self.packed_formats:
            return self._iter_tensors()
        return self._iter_tensors(keep_packed)

    def tokenizer_dir(self, out_dir: str | Path) -> Path:
        """Write tokenizer.json and tokenizer_config.json into `out_dir`; return it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._write_tokenizer(out)
        return out

    # Name used in docs/contracts.md.
    tokenizer_files = tokenizer_dir
