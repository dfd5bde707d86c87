"""What llama.cpp's converter does per architecture beyond the Llama basics, for `make_gguf_model`:
tensor names (gguf's own name map), extra metadata and tensors (Llama 3 rope_freqs, Gemma 3's
sliding window, Phi-3's rope factors) and value changes (Gemma's norms stored as 1 + w)."""

from __future__ import annotations

import math

import numpy as np

# HF model_type -> GGUF general.architecture
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3",
             "phi3": "phi3"}


def gguf_tensor_name(arch: str, hf_name: str, n_blocks: int) -> str:
    """llama.cpp's name of an HF tensor (from gguf's TensorNameMap: not tvmlm's own table)."""
    import gguf

    base, _, suffix = hf_name.rpartition(".")
    name = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_blocks).get_name(base)
    if name is None:
        raise KeyError(f"no GGUF name for {hf_name!r} in {arch}")
    return f"{name}.{suffix}"


def convert_tensor(arch: str, name: str, t: np.ndarray) -> np.ndarray:
    """Gemma's RMSNorm weights are stored as 1 + w (llama.cpp adds the 1 at conversion)."""
    if arch == "gemma3" and name.endswith("norm.weight"):
        return t + np.float32(1.0)
    return t


def llama3_rope_freqs(rope: dict, theta: float, head_dim: int) -> np.ndarray:
    # convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors
    factor, low, high = rope["factor"], rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def add_arch_extras(w, cfg: dict, arch: str, head_dim: int) -> None:
    """Metadata and configuration tensors llama.cpp writes for this architecture."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type"))
    if arch == "llama" and kind == "llama3":
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        w.add_tensor("rope_freqs.weight", llama3_rope_freqs(rope, theta, head_dim))
    if arch == "gemma3":
        import gguf

        w.add_sliding_window(cfg["sliding_window"])
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
        full = cfg["rope_parameters"]["full_attention"]
        if full.get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(full["factor"])
    if arch == "phi3":
        if kind == "longrope":
            w.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], dtype=np.float32))
            w.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], dtype=np.float32))
            w.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
        if cfg.get("sliding_window"):
            w.add_sliding_window(cfg["sliding_window"])


def rope_theta(cfg: dict) -> float:
    """The (global) rope base of an HF config dict, as llama.cpp writes rope.freq_base."""
    rope = cfg.get("rope_parameters") or {}
    if "full_attention" in rope:
        rope = rope["full_attention"]
    return cfg.get("rope_theta") or rope.get("rope_theta", 10000.0)


def rotary_dims(cfg: dict, head_dim: int) -> int:
    """rope.dimension_count: the rotated dims of a head (Phi-3.5 / Phi-4 mini rotate a part)."""
    rope = cfg.get("rope_parameters") or {}
    return int(head_dim * rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
