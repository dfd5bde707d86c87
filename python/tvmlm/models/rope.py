"""Rope computed in the model, for what the KV cache's single rope cannot do: Gemma 3's two bases
(local layers 10k, global 1M, with linear scaling on the global ones), Phi-3's longrope factors
and partial rotary dims. The KV cache then runs with RopeMode.NONE; positions come from
`get_query_positions`.

The inverse frequencies are computed once at build time in float32 as transformers computes them
(`modeling_rope_utils`), and baked into the module as a constant; the kernel evaluates cos/sin
once per (token, dimension) and rotates every q and k head with them (rotate-half pairing).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .llama_config import LlamaConfig


def rope_params(cfg: LlamaConfig, sliding: bool) -> dict[str, Any]:
    """rope_theta plus the rope_scaling entries of one layer kind."""
    if sliding and cfg.rope_local is not None:
        return dict(cfg.rope_local)
    return {"rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}


def inv_freq(cfg: LlamaConfig, sliding: bool) -> tuple[np.ndarray, float]:
    """(inverse frequencies [rotary_dim / 2] float32, cos/sin scale) of one layer kind."""
    params = rope_params(cfg, sliding)
    dim = cfg.rotary_dim or cfg.head_dim
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    base = np.power(np.float32(params["rope_theta"]), exponent, dtype=np.float32)
    kind = params.get("rope_type", "default")
    scale = 1.0
    if kind == "default":
        inv = np.float32(1.0) / base
    elif kind == "linear":
        inv = np.float32(1.0) / base / np.float32(params["factor"])
    elif kind == "longrope":
        orig = params["original_max_position_embeddings"]
        # transformers switches to the long factors once a sequence passes `orig`; a compiled
        # model has one set, chosen by its context window as llama.cpp does
        ext = params["long_factor"] if cfg.context_window_size > orig else params["short_factor"]
        inv = np.float32(1.0) / (np.asarray(ext, dtype=np.float32) * base)
        factor = params.get("factor") or cfg.context_window_size / orig
        scale = params.get("attention_factor") or (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig)))
    else:
        raise ValueError(f"unsupported rope type {kind!r} for model-side rope")
    return np.ascontiguousarray(inv, dtype=np.float32), float(scale)


def rope_kernel(rotated_heads: int, total_heads: int, head_dim: int, rotary_dim: int, dtype: str, scale: float):
    """PrimFunc rope(qkv [b, s, heads, d], positions [b * s], inv_freq [rotary / 2]) -> out: the
    first `rotated_heads` heads rotated over their first `rotary_dim` dims, the rest copied."""
    from tvm.script import tirx as T

    half = rotary_dim // 2

    @T.prim_func(s_tir=True)
    def rope(var_qkv: T.handle, var_pos: T.handle, var_inv: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        b = T.int64()
        s = T.int64()
        qkv = T.match_buffer(var_qkv, (b, s, total_heads, head_dim), dtype)
        pos = T.match_buffer(var_pos, (b * s,), "int32")
        inv = T.match_buffer(var_inv, (half,), "float32")
        out = T.match_buffer(var_out, (b, s, total_heads, head_dim), dtype)
        for t in T.parallel(b * s):
            with T.sblock("token"):
                T.reads()
                T.writes()
                cos = T.sblock_alloc_buffer((half,), "float32")
                sin = T.sblock_alloc_buffer((half,), "float32")
                bi: T.let[T.int64] = t // s
                si: T.let[T.int64] = t % s
                for d in T.serial(half):
                    angle: T.let[T.float32] = T.Cast("float32", pos[t]) * inv[d]
                    cos[d] = T.cos(angle) * T.float32(scale)
                    sin[d] = T.sin(angle) * T.float32(scale)
                for h in T.serial(rotated_heads):
                    for d in T.vectorized(half):
                        out[bi, si, h, d] = T.Cast(dtype, T.Cast("float32", qkv[bi, si, h, d]) * cos[d]
                                                   - T.Cast("float32", qkv[bi, si, h, d + half]) * sin[d])
                        out[bi, si, h, d + half] = T.Cast(dtype, T.Cast("float32", qkv[bi, si, h, d + half]) * cos[d]
                                                          + T.Cast("float32", qkv[bi, si, h, d]) * sin[d])
                    for d in T.serial(rotary_dim, head_dim):
                        out[bi, si, h, d] = qkv[bi, si, h, d]
                for h in T.serial(rotated_heads, total_heads):
                    for d in T.vectorized(head_dim):
                        out[bi, si, h, d] = qkv[bi, si, h, d]

    return rope


def apply_rope(cfg: LlamaConfig, sliding: bool, qkv, positions):
    """qkv [b, s, q + 2 kv heads, d] with rope applied to its q and k heads (relax nn Tensors)."""
    from tvm.relax.frontend.nn import Tensor, op

    freqs, scale = inv_freq(cfg, sliding)
    h, kvh = cfg.num_attention_heads, cfg.num_key_value_heads
    func = rope_kernel(h + kvh, h + 2 * kvh, cfg.head_dim, cfg.rotary_dim or cfg.head_dim, qkv.dtype, scale)
    return op.tensor_ir_op(func, "model_rope", args=[qkv, positions, Tensor.from_const(freqs)],
                           out=Tensor.placeholder(qkv.shape, qkv.dtype))
