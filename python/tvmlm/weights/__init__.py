"""Model weights and tokenizer loading: an HF directory or a GGUF file -> one `LoadedModel`.

`LoadedModel.tensors()` yields float32 numpy arrays under Hugging Face Llama/Qwen2 names, one at a
time, so a 7B model never has to be materialized in float32 all at once. `tokenizer_dir(out)` writes
`tokenizer.json` + `tokenizer_config.json` (+ `generation_config.json` when there are extra stop
ids) that `tvmlm.tokenizer.Tokenizer` and the compiled package use (docs/contracts.md section 3).

This module imports neither `tvm` nor `tvmlm._core`: it must work before anything is compiled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["LoadedModel", "load", "SUPPORTED_ARCHITECTURES", "SUPPORTED_GGUF_ARCHITECTURES"]

# HF `architectures[0]` values the model definitions in tvmlm.models implement.
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
)
# `general.architecture` values of GGUF files we can map to the HF names above.
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")


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
    _iter_tensors: Callable[[], Iterator[tuple[str, np.ndarray]]] = dataclasses.field(repr=False)
    _write_tokenizer: Callable[[Path], None] = dataclasses.field(repr=False)

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield `(hf_name, float32 array)` one tensor at a time."""
        return self._iter_tensors()

    def tokenizer_dir(self, out_dir: str | Path) -> Path:
        """Write tokenizer.json and tokenizer_config.json into `out_dir`; return it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._write_tokenizer(out)
        return out

    # Name used in docs/contracts.md.
    tokenizer_files = tokenizer_dir


def load(path: str | Path) -> LoadedModel:
    """Open an HF model directory or a `.gguf` file. Raises with a clear message when unusable."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"model path {str(p)!r} does not exist; expected a Hugging Face model directory "
            "(config.json + *.safetensors) or a .gguf file"
        )
    if p.is_dir():
        from . import hf

        return hf.load_hf_dir(p)
    if p.suffix.lower() == ".gguf":
        from . import gguf

        return gguf.load_gguf(p)
    raise ValueError(
        f"model path {str(p)!r} is a file but not a .gguf file; expected a Hugging Face model "
        "directory (config.json + *.safetensors) or a .gguf file"
    )
