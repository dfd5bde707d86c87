"""Model weights and tokenizer loading: an HF directory or a GGUF file -> one `LoadedModel`.

`LoadedModel.tensors()` yields float32 numpy arrays under Hugging Face Llama/Qwen2 names, one at a
time, so a 7B model never has to be materialized in float32 all at once. `tokenizer_dir(out)` writes
`tokenizer.json` + `tokenizer_config.json` (+ `generation_config.json` when there are extra stop
ids) that `tvmlm.tokenizer.Tokenizer` and the compiled package use (docs/contracts.md section 3).

This module imports neither `tvm` nor `tvmlm._core`: it must work before anything is compiled.
"""

from __future__ import annotations

from pathlib import Path

from ..models.packed import PackedWeight
from .types import SUPPORTED_ARCHITECTURES, SUPPORTED_GGUF_ARCHITECTURES, LoadedModel

__all__ = ["LoadedModel", "PackedWeight", "load", "SUPPORTED_ARCHITECTURES", "SUPPORTED_GGUF_ARCHITECTURES"]


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
