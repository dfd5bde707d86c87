"""The numbers that shape a Llama-family graph, read from an HF config (no tvm import)."""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclasses.dataclass
class LlamaConfig:
    """The numbers that shape the graph, read from an HF-style config.json dict."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    context_window_size: int
    prefill_chunk_size: int = 2048
    max_batch_size: int = 128
    dtype: str = "float32"
    kv_dtype: str = "float32"  # the paged KV cache's; attention runs in float32 inside the kernels
    # Weight storage (models/quant.py): "f32" (= dtype) or a packed format kept in memory.
    linear_format: str = "f32"
    embed_format: str = "f32"
    lm_head_format: str = "f32"
    # Packed weights in the row-interleaved layout of the int8 CPU kernels (models/quant.py).
    interleave_rows: bool = False

    @staticmethod
    def from_hf(config: dict[str, Any]) -> LlamaConfig:
        archs = config.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ValueError(
                f"unsupported architecture {archs or config.get('model_type')!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        family = SUPPORTED_ARCHITECTURES[arch]
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        rope_scaling = config.get("rope_scaling") or None
        rope_theta = config.get("rope_theta")
        # transformers >= 5 folds rope settings into `rope_parameters`.
        rope_params = config.get("rope_parameters") or {}
        if rope_theta is None:
            rope_theta = rope_params.get("rope_theta", 10000.0)
        if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
            rope_scaling = dict(rope_params)
        if rope_scaling is not None:
            rope_scaling = dict(rope_scaling)
            kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
            if kind in (None, "default"):
                rope_scaling = None
            elif kind != "llama3":
                raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: llama3")
            else:
                # the numbers that shape the graph only (transformers 5 also keeps rope_theta here),
                # so an HF directory and its GGUF give one config
                rope_scaling = {"rope_type": "llama3", "factor": float(rope_scaling["factor"]),
                                "low_freq_factor": float(rope_scaling.get("low_freq_factor", 1.0)),
                                "high_freq_factor": float(rope_scaling.get("high_freq_factor", 4.0)),
                                "original_max_position_embeddings": int(rope_scaling.get("original_max_position_embeddings", 8192))}
        context = config.get("max_position_embeddings") or 4096
        return LlamaConfig(
            model_type=family,
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=family == "qwen2" or bool(config.get("attention_bias", False)),
            qk_norm=family == "qwen3",
            context_window_size=int(context),
            prefill_chunk_size=min(2048, int(context)),
        )
