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
    """Open an HF model directory or a `.gguf` file, its headers checked first (checks.py).

    Anything unusable raises `ModelError` (a ValueError; `ModelNotFoundError`, also a
    FileNotFoundError, for a missing path) naming the file and what was expected."""
    from ..errors import ModelError, ModelNotFoundError, TvmlmError
    from . import checks

    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(
            f"model path {str(p)!r} does not exist; expected a Hugging Face model directory "
            "(config.json + *.safetensors) or a .gguf file"
        )
    try:
        if p.is_dir():
            from . import hf

            tensors = checks.check_hf_dir(p)
            loaded = hf.load_hf_dir(p)
        elif p.suffix.lower() == ".gguf":
            from . import gguf

            tensors = checks.check_gguf_file(p)
            loaded = gguf.load_gguf(p)
        else:
            raise ModelError(
                f"model path {str(p)!r} is a file but not a .gguf file; expected a Hugging Face model "
                "directory (config.json + *.safetensors) or a .gguf file"
            )
        checks.check_loaded(loaded, tensors)
        checks.check_tokenizer(loaded)
    except TvmlmError:
        raise
    except (ValueError, NotImplementedError) as exc:  # the loaders' own messages name the file
        raise ModelError(str(exc)) from exc
    except OSError as exc:
        raise ModelError(f"cannot read the model at {str(p)!r}: {exc}") from exc
    return loaded
