"""The GGUF architectures tvmlm reads, and what Gemma 3 and Phi-3 add to the Llama layout (tensor
names, config keys and tensor values as llama.cpp's converter writes them, mapped back to Hugging
Face's)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

# general.architecture -> (HF model_type, HF architecture): the GGUF files tvmlm reads
HF_ARCH = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
}

# per-architecture block tensor names that differ from (or are missing in) the Llama table
BLOCK_NAMES = {
    "gemma3": {
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    # fused projections: q | k | v rows, and gate | up rows stored as ffn_up
    "phi3": {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
}

# configuration tensors (not weights), read into the config
CONFIG_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def hf_value(arch: str, hf_name: str, w: np.ndarray) -> np.ndarray:
    """A tensor's value in Hugging Face's convention: Gemma norms are stored as 1 + w."""
    if arch == "gemma3" and hf_name.endswith("norm.weight"):
        return w - np.float32(1.0)
    return w


def arch_config(arch: str, key: Callable[..., Any], tensors: dict, config: dict[str, Any]) -> dict[str, Any]:
    """HF config entries of Gemma 3 / Phi-3 that the Llama keys do not give (llama.cpp's defaults
    where the file has no key)."""
    if arch == "gemma3":
        heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
        extra = {
            "hidden_activation": "gelu_pytorch_tanh",
            # llama.cpp: 1 / sqrt(head_dim), except Gemma 3 27B (62 layers): 1 / sqrt(hidden / heads)
            "query_pre_attn_scalar": config["hidden_size"] // heads if layers == 62 else config["head_dim"],
            "sliding_window": key("attention.sliding_window"),
            "sliding_window_pattern": key("attention.sliding_window_pattern", 6),
            "final_logit_softcapping": key("final_logit_softcapping"),
            "rope_local_base_freq": key("rope.freq_base_swa", 10000.0),
        }
        if isinstance(extra["sliding_window_pattern"], list):  # per-layer flags: True = sliding
            extra["layer_types"] = ["sliding_attention" if f else "full_attention" for f in extra.pop("sliding_window_pattern")]
        return extra
    if arch == "phi3":
        extra: dict[str, Any] = {"sliding_window": key("attention.sliding_window")}
        rotary = key("rope.dimension_count")
        if rotary and rotary != config["head_dim"]:
            extra["partial_rotary_factor"] = rotary / config["head_dim"]
        if "rope_factors_long.weight" in tensors:
            orig = key("rope.scaling.original_context_length") or config["max_position_embeddings"]
            extra["original_max_position_embeddings"] = orig
            extra["rope_scaling"] = {
                "rope_type": "longrope",
                "long_factor": np.asarray(tensors["rope_factors_long.weight"].data, np.float32).tolist(),
                "short_factor": np.asarray(tensors["rope_factors_short.weight"].data, np.float32).tolist(),
                "original_max_position_embeddings": orig,
            }
            if (attn_factor := key("rope.scaling.attn_factor")) is not None:
                extra["rope_scaling"]["attention_factor"] = attn_factor
        return extra
    return {}
