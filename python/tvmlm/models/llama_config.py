"""The numbers that shape a Llama-family graph, read from an HF config (no tvm import).

One decoder covers Llama, Mistral, Qwen2/3, Gemma 3 and Phi-3; what differs between them is data
here: Gemma's scaled embeddings, (1 + w) norms (folded into the weights at conversion), sandwich
norms, GeGLU, query_pre_attn_scalar and local/global rope bases; Phi-3's fused projections
(conversion) and longrope; sliding windows on the layers the config names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
}
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


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
    # Per-tensor exceptions to linear_format, by parameter name ("model.layers.3.mlp.down_proj.weight"):
    # a GGUF file mixes block types tensor by tensor (weights/gguf_blocks.py).
    linear_formats: dict[str, str] = dataclasses.field(default_factory=dict)
    # Packed weights in the row-interleaved layout of the int8 CPU kernels (models/quant.py).
    interleave_rows: bool = False
    hidden_act: str = "silu"  # of the gated MLP: silu (SwiGLU) or gelu_pytorch_tanh (GeGLU)
    embed_scale: float | None = None  # Gemma: embeddings times sqrt(hidden_size)
    sandwich_norm: bool = False  # Gemma: norms after attention and the MLP too (4 per layer)
    norm_plus_one: bool = False  # Gemma: RMSNorm by (1 + w); converted weights hold 1 + w
    attn_scale: float | None = None  # softmax scale; None: head_dim ** -0.5
    final_logit_softcapping: float | None = None
    # Sliding-window attention: the window (keys within `sliding_window` positions of the query,
    # itself included) on the layers listed; () when no layer has a window shorter than the context.
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = ()
    # Rope of the sliding layers when it differs from the others' (Gemma 3's local base), as a
    # rope_scaling-style dict with rope_theta; None: all layers alike.
    rope_local: dict[str, Any] | None = None
    rotary_dim: int | None = None  # < head_dim: partial rotary (Phi-3.5 / Phi-4 mini)

    @property
    def rope_in_model(self) -> bool:
        """Rope computed by the model (models/rope.py) rather than by the KV cache, which has one
        rope for all layers and no linear / longrope scaling or partial rotary dims."""
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        return self.rope_local is not None or kind not in ("default", "llama3") or (
            self.rotary_dim is not None and self.rotary_dim != self.head_dim)

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
        rope_theta, rope_scaling, rope_local = _rope(config, family)
        context = int(config.get("max_position_embeddings") or 4096)
        window, sliding = _sliding_layers(config, family, context)
        rotary = int(head_dim * _rope_params(config, family).get("partial_rotary_factor", 1.0))
        act = config.get("hidden_activation") or config.get("hidden_act") or "silu"
        if act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden activation {act!r}; supported: {', '.join(ACTIVATIONS)}")
        if config.get("attn_logit_softcapping"):
            raise ValueError("attention logit softcapping (attn_logit_softcapping, Gemma 2) is not supported")
        gemma = family == "gemma3"
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
            tie_word_embeddings=bool(config.get("tie_word_embeddings", gemma)),
            attention_bias=family == "qwen2" or bool(config.get("attention_bias", False)),
            qk_norm=family in ("qwen3", "gemma3"),
            context_window_size=context,
            prefill_chunk_size=min(2048, context),
            hidden_act=act,
            embed_scale=float(config["hidden_size"]) ** 0.5 if gemma else None,
            sandwich_norm=gemma,
            norm_plus_one=gemma,
            attn_scale=float(config.get("query_pre_attn_scalar", 256)) ** -0.5 if gemma else None,
            final_logit_softcapping=config.get("final_logit_softcapping") or None,
            sliding_window=window,
            sliding_layers=sliding,
            rope_local=rope_local,
            rotary_dim=rotary if rotary != head_dim else None,
        )


def _rope_params(config: dict[str, Any], family: str, layer_type: str = "full_attention") -> dict[str, Any]:
    """One layer type's rope parameters: transformers >= 5 keeps them in `rope_parameters` (per
    layer type for Gemma 3), older configs in rope_theta + rope_scaling (+ rope_local_base_freq)."""
    params = dict(config.get("rope_parameters") or {})
    if "full_attention" in params:
        params = dict(params.get(layer_type) or {})
    elif params:
        return params
    if family == "gemma3" and layer_type == "sliding_attention":
        params.setdefault("rope_theta", config.get("rope_local_base_freq", 10000.0))
        return params
    old = dict(config.get("rope_scaling") or {})
    if old and "rope_type" not in old and "type" in old:
        old["rope_type"] = old.pop("type")
    params = {**old, **params}
    params.setdefault("rope_theta", config.get("rope_theta", 1e6 if family == "gemma3" else 10000.0))
    if "partial_rotary_factor" in config:
        params.setdefault("partial_rotary_factor", config["partial_rotary_factor"])
    return params


_ROPE_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings", "factor", "attention_factor"),
}


def _scaling(params: dict[str, Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """The rope_scaling dict of a layer type: only the numbers that shape the graph (so an HF
    directory and its GGUF give one config), None for plain rope."""
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind == "default":
        return None
    if kind == "su":
        kind = "longrope"
    if kind not in _ROPE_KEYS:
        raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: {', '.join(_ROPE_KEYS)}")
    out: dict[str, Any] = {"rope_type": kind}
    if kind == "llama3":
        out.update(factor=float(params["factor"]), low_freq_factor=float(params.get("low_freq_factor", 1.0)),
                   high_freq_factor=float(params.get("high_freq_factor", 4.0)),
                   original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)))
    elif kind == "linear":
        out["factor"] = float(params["factor"])
    else:  # longrope (Phi-3): factors per frequency, chosen by context length (models/rope.py)
        orig = params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
        # as float32 (what a GGUF stores and what the rope uses), written shortest
        f32 = lambda xs: [float(str(np.float32(x))) for x in xs]  # noqa: E731
        out.update(short_factor=f32(params["short_factor"]), long_factor=f32(params["long_factor"]),
                   original_max_position_embeddings=int(orig or config.get("max_position_embeddings") or 4096))
        for key in ("factor", "attention_factor"):
            if params.get(key) is not None:
                out[key] = float(params[key])
    return out


def _rope(config: dict[str, Any], family: str):
    """(rope_theta, rope_scaling) of the full-attention layers and the sliding layers' rope when
    it differs (Gemma 3), as a dict with rope_theta."""
    full = _rope_params(config, family)
    scaling = _scaling(full, config)
    local = None
    if family == "gemma3":
        sliding = _rope_params(config, family, "sliding_attention")
        local = {"rope_theta": float(sliding.get("rope_theta", 10000.0))}
        if (local_scaling := _scaling(sliding, config)) is not None:
            local.update(local_scaling)
    return full.get("rope_theta", 10000.0), scaling, local


def _sliding_layers(config: dict[str, Any], family: str, context: int) -> tuple[int | None, tuple[int, ...]]:
    """(window, layers with it): from `layer_types` when the config lists them, else by family
    (Mistral / Phi-3: all layers; Qwen2/3: layers from max_window_layers on when
    use_sliding_window; Gemma 3: all but every sliding_window_pattern-th). A window at least as
    long as the context changes nothing and is dropped."""
    window = config.get("sliding_window")
    n = config["num_hidden_layers"]
    types = config.get("layer_types")
    if types:
        layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    elif family in ("mistral", "phi3"):
        layers = tuple(range(n))
    elif family in ("qwen2", "qwen3"):
        on = config.get("use_sliding_window", False)
        layers = tuple(range(int(config.get("max_window_layers") or 0), n)) if on else ()
    elif family == "gemma3":
        pattern = int(config.get("sliding_window_pattern") or 6)
        layers = tuple(i for i in range(n) if (i + 1) % pattern)
    else:
        layers = ()
    if not window or not layers or int(window) >= context:
        return None, ()
    return int(window), layers


def check_target_support(cfg: LlamaConfig, device_kind: str) -> None:
    """Refuse what only the CPU kernels implement (before anything is compiled): sliding windows
    shorter than the context and rope computed in the model."""
    if device_kind == "cpu":
        return
    if cfg.sliding_layers:
        raise ValueError(f"sliding-window attention (window {cfg.sliding_window} < context "
                         f"{cfg.context_window_size}) runs on cpu only, not {device_kind}")
    if cfg.rope_in_model:
        raise ValueError(f"{cfg.model_type}'s rope (per-layer bases, linear or longrope scaling) runs on cpu only, "
                         f"not {device_kind}")
