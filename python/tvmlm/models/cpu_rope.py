"""The KV cache's rope kernel for CPUs: cos/sin once per (token, dimension), tokens in parallel.

TVM's `fused_rope` (``tvm.relax.frontend.nn.llm.position_embedding.llama_rope_with_position_map``)
splits the fused qkv projection into q, k and v and applies rope to q and k. On the llvm target it
runs as one serial scalar loop that evaluates pow, cos and sin for every element of every head: 7 ms
per layer for a 512-token prefill here (about a fifth of the whole prefill), and 14 us per layer
per decode step. This kernel has the same signature and the same frequency expressions (TVM's own
`switch_rope_freq_func`, so Llama-3 and other scalings are unchanged and the values are
bit-identical), but computes each (token, dimension) cos/sin once for all heads, runs the tokens in
parallel, and vectorizes the rotation over head_dim.

Only the default rotate-half pairing is covered (not GPT-J's interleaved pairs, not longrope's
extension factors); `replace_fused_rope` leaves TVM's kernel in place for those.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import tirx
from tvm.relax.frontend.nn.llm.position_embedding import switch_rope_freq_func
from tvm.script import tirx as T


def _cos_sin(rope_scaling: dict[str, Any], pos, d, rotary_dim: int, theta: float):
    """cos and sin of the rope angle of position `pos`, dimension `d`, exactly as TVM's fused_rope."""
    cos_freq, sin_freq, var_map = switch_rope_freq_func(rope_scaling)(
        pos * tirx.const(1.0, "float32"), d, rotary_dim, theta, "float32"
    )
    for var, value in var_map.items():
        cos_freq, sin_freq = tirx.Let(var, value, cos_freq), tirx.Let(var, value, sin_freq)
    return cos_freq, sin_freq


def fused_rope_cpu(theta: float, head_dim: int, num_q_heads: int, num_kv_heads: int, dtype: str,
                   rope_scaling: dict[str, Any], rotary_dim: int):
    """Drop-in replacement for TVM's `fused_rope(qkv, position_map, q, k, v, apply_rope)`."""
    fused_heads = num_q_heads + 2 * num_kv_heads
    rotated_heads = num_q_heads + num_kv_heads
    half = rotary_dim // 2

    @T.macro
    def rotate(dst, dst_head, src_head, qkv, cos, sin, s, apply_rope):
        if apply_rope > 0:
            # rotate-half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
            for d in T.vectorized(half):
                dst[s, dst_head, d] = T.Cast(dtype, cos[d] * T.Cast("float32", qkv[s, src_head, d])
                                             + sin[d] * -T.Cast("float32", qkv[s, src_head, d + half]))
                dst[s, dst_head, d + half] = T.Cast(dtype, cos[d + half] * T.Cast("float32", qkv[s, src_head, d + half])
                                                    + sin[d + half] * T.Cast("float32", qkv[s, src_head, d]))
            for d in T.serial(rotary_dim, head_dim):
                dst[s, dst_head, d] = qkv[s, src_head, d]
        else:
            for d in T.vectorized(head_dim):
                dst[s, dst_head, d] = qkv[s, src_head, d]

    @T.prim_func(s_tir=True)
    def fused_rope(var_qkv: T.handle, var_position_map: T.handle, var_q: T.handle, var_k: T.handle,
                   var_v: T.handle, apply_rope: T.int64):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int32()
        position_map_elem_offset = T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, fused_heads, head_dim), dtype)
        q = T.match_buffer(var_q, (seq_len, num_q_heads, head_dim), dtype)
        k = T.match_buffer(var_k, (seq_len, num_kv_heads, head_dim), dtype)
        v = T.match_buffer(var_v, (seq_len, num_kv_heads, head_dim), dtype)
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset)
        for s in T.parallel(seq_len):
            with T.sblock("token"):
                T.reads()
                T.writes()
                cos = T.sblock_alloc_buffer((rotary_dim,), "float32")
                sin = T.sblock_alloc_buffer((rotary_dim,), "float32")
                for d in T.serial(rotary_dim):
                    cos[d] = _cos_sin(rope_scaling, position_map[s], d, rotary_dim, theta)[0]
                    sin[d] = _cos_sin(rope_scaling, position_map[s], d, rotary_dim, theta)[1]
                for h in T.serial(num_q_heads):
                    rotate(q, h, h, qkv, cos, sin, s, apply_rope)
                for h in T.serial(num_kv_heads):
                    rotate(k, h, num_q_heads + h, qkv, cos, sin, s, apply_rope)
                    for d in T.vectorized(head_dim):
                        v[s, h, d] = qkv[s, rotated_heads + h, d]

    return fused_rope


def replace_fused_rope(mod: tvm.ir.IRModule, *, theta: float, head_dim: int, num_q_heads: int, num_kv_heads: int,
                       dtype: str, rope_scaling: dict[str, Any] | None) -> tvm.ir.IRModule:
    """`mod` with its KV cache's `fused_rope` PrimFunc (same GlobalVar) replaced by `fused_rope_cpu`."""
    rope_scaling = rope_scaling or {}
    if rope_scaling.get("rope_type") in ("gptj", "longrope"):
        return mod
    gvs = [gv for gv in mod.get_global_vars() if gv.name_hint == "fused_rope"]
    if len(gvs) != 1:
        return mod
    func = fused_rope_cpu(theta, head_dim, num_q_heads, num_kv_heads, dtype, rope_scaling, head_dim)
    mod[gvs[0]] = func.with_attrs(dict(mod[gvs[0]].attrs or {})).with_attr("tirx.is_scheduled", True)
    return mod
