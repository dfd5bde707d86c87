"""The ragged-prefill CPU attention kernel: a prompt's new tokens against its own new keys
(cpu_attention.py installs it in place of TVM's)."""

from __future__ import annotations

from tvm.script import tirx as T

from . import x86_bf16
from .cpu_attention_tir import (LOG2E, NEG, in_window, start_online_softmax, tree_sum, vec_len, visible_end,
                                window_begin)
from .fast_math import any_greater, fast_exp2, reduce_lanes, with_any_greater

MAX_SLACK = 8.0  # how far (log2) scores may exceed the running max (p <= 2**8)
SCORE_TILE = 16  # keys per score tile: one float32x16 vector of scores
QUERY_VECTORS = 24  # query vectors (rows x grouped heads) per task share each key tile
MAX_QUERY_ROWS = 8


def tile_row(buf, hk, tile, row: int, col: int, dtype: str):
    """16 lanes of a transposed tile (kt or vt): buf[hk, tile, row, col:col + 16], indexed in int64
    (see kt in ragged_prefill_cpu)."""
    return buf.vload([T.Cast("int64", hk), T.Cast("int64", tile), T.int64(row), T.int64(col)], f"{dtype}x{SCORE_TILE}")


def bf16_dot_fits(d_qk: int, d_v: int) -> bool:
    """Whether the bf16 ragged kernel's layouts divide these head dims (q·k in dimension pairs,
    p @ v in 16-lane value chunks, a score tile of one 16-lane vector)."""
    return d_qk % 2 == 0 and d_v % x86_bf16.LANES == 0 and SCORE_TILE == x86_bf16.LANES


def ragged_prefill_cpu(h_kv: int, h_q: int, d_qk: int, d_v: int, dtype: str, bf16_dot: bool = False, window: int = 0):
    """Drop-in replacement for ``_attention_prefill_ragged_cpu(h_kv, h_q, d_qk, d_v, dtype, ...)``.

    Keys are first transposed per sequence (``kt[kv head, tile, d, key]``), so the scores of one query
    vector against a tile of ``TK`` keys are ``d_qk`` vector FMAs with no horizontal sums. Each task
    takes a block of up to ``R`` query rows and one kv head, and walks the keys its last row may see.
    Scores and p @ v are single vector expressions per tile (no loop-carried memory accumulators:
    TVM turns scratch of 1 KB or more into heap workspace, which LLVM cannot keep in registers).

    ``bf16_dot`` (AVX-512 BF16, see x86_bf16.py): q, k, v and the softmax weights p are rounded to
    bfloat16 and both products run as ``vdpbf16ps``, which does two multiply-adds per float32 lane:
    half the instructions of the float32 FMAs that bound this kernel. Keys are packed as pairs of
    dimensions (``kt[kv head, tile, d / 2, key]``), values as pairs of keys (``vt[kv head, tile,
    key / 2, d]``); sums, the softmax and the output stay float32."""
    G = h_q // h_kv
    TK = SCORE_TILE
    R = max(1, min(MAX_QUERY_ROWS, QUERY_VECTORS // G))  # query rows per task
    if bf16_dot and R * G % 2:
        R = R - 1 if R > 1 else 2  # the bf16 passes take query vectors in pairs
    RG = R * G
    VD = vec_len(d_v)  # lanes of one p @ v output chunk
    scale_log2e = LOG2E
    if bf16_dot and not bf16_dot_fits(d_qk, d_v):
        raise ValueError(f"bf16 attention needs an even d_qk and d_v % {x86_bf16.LANES} == 0, got {d_qk}, {d_v}")
    KR = d_qk // 2 if bf16_dot else d_qk  # rows of a key tile: pairs of dimensions, or dimensions
    KP = TK // 2  # bf16: pairs of keys in a tile
    NV = d_v // x86_bf16.LANES  # bf16: 16-lane chunks of a value row

    def visible(end, beg):
        """Lanes j of a key tile with beg <= j < end (beg only on sliding-window layers)."""
        lanes = T.ramp(0, 1, TK)
        below_end = lanes < T.broadcast(end, TK)
        return below_end if not window else T.And(below_end, lanes >= T.broadcast(beg, TK))

    # pylint: disable=too-many-locals,too-many-statements
    @T.prim_func(s_tir=True)
    def batch_prefill_ragged_kv(
        var_q: T.handle,  # [total_len, h_q, d_qk]
        var_q_indptr: T.handle,  # [batch_size + 1]
        var_k: T.handle,  # [total_len, h_kv, d_qk]
        var_v: T.handle,  # [total_len, h_kv, d_v]
        var_kv_indptr: T.handle,  # [batch_size + 1]
        var_q_rope_position: T.handle,  # [total_q_len]
        var_k_rope_pos_offset: T.handle,  # [b]
        var_output: T.handle,  # [total_len, h_q, d_v]
        var_lse: T.handle,  # [total_len, h_q]
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        batch_size = T.int32()
        qo_len = T.int32()
        kv_len = T.int32()
        q_indptr_elem_offset = T.int32()
        kv_indptr_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()

        q = T.match_buffer(var_q, (qo_len, h_q, d_qk), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        k = T.match_buffer(var_k, (kv_len, h_kv, d_qk), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d_v), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_elem_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (qo_len,), "int32", elem_offset=q_rope_position_elem_offset)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        output = T.match_buffer(var_output, (qo_len, h_q, d_v), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")

        assert rotary_mode == 0, "tvmlm CPU attention: rotary_mode 1 (RopeMode.INLINE) is not supported"

        with T.sblock("root"):
            T.reads()
            T.writes()
            # one sequence's keys, transposed tile by tile: kt[kv head, tile, d, key in tile]. A tile's
            # d rows sit at constant offsets from one base (a row stride of kv_len left 64 row
            # addresses for LLVM to spill); keys past the sequence's end are 0 (their scores are masked).
            # Indexed in int64: an int32 index is sign-extended after the add, which keeps LLVM from
            # folding a row's constant offset into the address, so it hoisted and spilled 32 of them.
            kt = T.sblock_alloc_buffer((T.int64(h_kv), T.Cast("int64", (kv_len + TK - 1) // TK), T.int64(KR), T.int64(TK)), "int32" if bf16_dot else "float32")
            if bf16_dot:  # values of a tile as pairs of keys; keys past the end are 0 (p = 0 there)
                vt = T.sblock_alloc_buffer((T.int64(h_kv), T.Cast("int64", (kv_len + TK - 1) // TK), T.int64(KP), T.int64(d_v)), "int32")
            for b in T.serial(batch_size):
                with T.sblock("seq"):
                    T.reads()
                    T.writes()
                    q0: T.let[T.int32] = q_indptr[b]
                    kv0: T.let[T.int32] = kv_indptr[b]
                    n_q: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                    n_kv: T.let[T.int32] = kv_indptr[b + 1] - kv_indptr[b]
                    for p in T.parallel(h_kv * ((n_kv + TK - 1) // TK)):
                        if bf16_dot:
                            for dp, j in T.grid(KR, TK):
                                key: T.let[T.int32] = (p // h_kv) * TK + j
                                kt[p % h_kv, p // h_kv, dp, j] = T.if_then_else(key < n_kv, x86_bf16.pair(
                                    T.Cast("float32", k[kv0 + T.min(key, n_kv - 1), p % h_kv, dp * 2]),
                                    T.Cast("float32", k[kv0 + T.min(key, n_kv - 1), p % h_kv, dp * 2 + 1])), 0)
                            for kp, dd in T.grid(KP, d_v):
                                key: T.let[T.int32] = (p // h_kv) * TK + kp * 2
                                vt[p % h_kv, p // h_kv, kp, dd] = x86_bf16.pair(
                                    T.if_then_else(key < n_kv, T.Cast("float32", v[kv0 + T.min(key, n_kv - 1), p % h_kv, dd]), T.float32(0)),
                                    T.if_then_else(key + 1 < n_kv, T.Cast("float32", v[kv0 + T.min(key + 1, n_kv - 1), p % h_kv, dd]), T.float32(0)))
                        else:
                            for dd, j in T.grid(d_qk, TK):
                                key: T.let[T.int32] = (p // h_kv) * TK + j
                                kt[p % h_kv, p // h_kv, dd, j] = T.if_then_else(
                                    key < n_kv, T.Cast("float32", k[kv0 + T.min(key, n_kv - 1), p % h_kv, dd]), T.float32(0))
                    n_blocks: T.let[T.int32] = (n_q + R - 1) // R
                    # causal blocks get more keys the later they are: task p takes block pb and block
                    # n_blocks - 1 - pb, so the statically chunked parallel loop stays balanced
                    for p in T.parallel(((n_blocks + 1) // 2) * h_kv):
                        for t in T.serial(2):
                            with T.sblock("attn"):
                                T.reads()
                                T.writes()
                                qf = T.sblock_alloc_buffer((RG, d_qk), "float32")
                                if bf16_dot:
                                    qb = T.sblock_alloc_buffer((RG, KR), "int32")  # qf as pairs
                                    sp = T.sblock_alloc_buffer((RG, KP), "int32")  # a tile's p as pairs
                                acc = T.sblock_alloc_buffer((RG, d_v), "float32")
                                s = T.sblock_alloc_buffer((RG, TK), "float32")
                                m = T.sblock_alloc_buffer((RG,), "float32")
                                l = T.sblock_alloc_buffer((RG,), "float32")
                                lv = T.sblock_alloc_buffer((RG, TK), "float32")  # per-lane softmax sums
                                hk: T.let[T.int32] = p % h_kv
                                pb: T.let[T.int32] = p // h_kv
                                blk: T.let[T.int32] = T.if_then_else(t == 0, pb, n_blocks - 1 - pb)
                                if t == 0 or blk != pb:
                                    r0: T.let[T.int32] = blk * R
                                    rows: T.let[T.int32] = T.min(R, n_q - r0)
                                    kend: T.let[T.int32] = visible_end(causal, n_kv, n_q, r0 + rows - 1)  # the block's last row
                                    for i, dd in T.grid(RG, d_qk):
                                        qf[i, dd] = T.Cast("float32", q[q0 + T.min(r0 + i // G, n_q - 1), hk * G + i % G, dd]) * T.abs(sm_scale) * scale_log2e
                                    if bf16_dot:
                                        for i, dp in T.grid(RG, KR):
                                            qb[i, dp] = x86_bf16.pair(qf[i, dp * 2], qf[i, dp * 2 + 1])
                                    start_online_softmax(m, l, acc, RG, d_v)
                                    for i, j in T.grid(RG, TK):
                                        lv[i, j] = T.float32(0)
                                    kbegin: T.let[T.int32] = window_begin(sm_scale, q_rope_position[q0 + r0], k_rope_pos_offset[b], window)  # the block's first row
                                    for tile in T.serial(kbegin // TK, (T.max(kend, 0) + TK - 1) // TK):
                                        k_start: T.let[T.int32] = tile * TK
                                        # Three passes over the query vectors, so each pass's iterations are
                                        # independent and short enough for the CPU to overlap several of them
                                        # (one long serial body per vector left the dot-product units idle
                                        # behind each vector's horizontal reductions).
                                        if bf16_dot:
                                            # scores of query vectors i, i + 1 against the tile, masked past their last
                                            # keys, as one 32-lane expression: each key row is loaded once for both
                                            for i2 in T.serial(RG // 2):
                                                i: T.let[T.int32] = i2 * 2
                                                end0: T.let[T.int32] = visible_end(causal, n_kv, n_q, r0 + i // G) - k_start
                                                end1: T.let[T.int32] = visible_end(causal, n_kv, n_q, r0 + (i + 1) // G) - k_start
                                                beg0: T.let[T.int32] = window_begin(sm_scale, q_rope_position[q0 + T.min(r0 + i // G, n_q - 1)], k_rope_pos_offset[b], window) - k_start
                                                beg1: T.let[T.int32] = window_begin(sm_scale, q_rope_position[q0 + T.min(r0 + (i + 1) // G, n_q - 1)], k_rope_pos_offset[b], window) - k_start
                                                s[i, T.ramp(0, 1, 2 * TK)] = T.Select(  # rows i and i + 1 of s, contiguous
                                                    x86_bf16.halves(visible(end0, beg0), visible(end1, beg1)),
                                                    x86_bf16.dot_chains([(x86_bf16.halves(T.broadcast(qb[i, dp], TK), T.broadcast(qb[i + 1, dp], TK)),
                                                                          x86_bf16.halves(tile_row(kt, hk, tile, dp, 0, "int32"), tile_row(kt, hk, tile, dp, 0, "int32")))
                                                                         for dp in range(KR)], chains=4, lanes=2 * TK),
                                                    T.broadcast(T.float32(-1e30), 2 * TK))
                                        else:
                                            for i in T.serial(RG):
                                                # scores of query vector i against the tile, masked past its last key
                                                row_end: T.let[T.int32] = visible_end(causal, n_kv, n_q, r0 + i // G) - k_start
                                                row_beg: T.let[T.int32] = window_begin(sm_scale, q_rope_position[q0 + T.min(r0 + i // G, n_q - 1)], k_rope_pos_offset[b], window) - k_start
                                                s[i, T.ramp(0, 1, TK)] = T.Select(
                                                    visible(row_end, row_beg),
                                                    tree_sum([T.broadcast(qf[i, dd], TK) * tile_row(kt, hk, tile, dd, 0, "float32") for dd in range(d_qk)], chains=8),
                                                    T.broadcast(T.float32(-1e30), TK))
                                        for i in T.serial(RG):
                                            # online softmax (log2 space) with a lazy running max: m only has to
                                            # stay within 2**8 of the scores, so most tiles skip the horizontal
                                            # max, and the sum l is kept per lane (reduced once at the end)
                                            row_end: T.let[T.int32] = visible_end(causal, n_kv, n_q, r0 + i // G) - k_start
                                            row_beg: T.let[T.int32] = window_begin(sm_scale, q_rope_position[q0 + T.min(r0 + i // G, n_q - 1)], k_rope_pos_offset[b], window) - k_start
                                            if any_greater(s.vload([i, 0], f"float32x{TK}"), T.broadcast(m[i] + T.float32(MAX_SLACK), TK)):
                                                tmax: T.let[T.float32] = reduce_lanes(s.vload([i, 0], f"float32x{TK}"), TK, T.max)
                                                alpha: T.let[T.float32] = fast_exp2(m[i] - tmax)
                                                m[i] = tmax
                                                for j in T.vectorized(TK):
                                                    lv[i, j] = lv[i, j] * alpha
                                                for dd in T.vectorized(d_v):
                                                    acc[i, dd] = acc[i, dd] * alpha
                                            for j in T.vectorized(TK):
                                                s[i, j] = T.if_then_else(in_window(j, row_end, row_beg, window), fast_exp2(s[i, j] - m[i]), T.float32(0))
                                            for j in T.vectorized(TK):
                                                lv[i, j] = lv[i, j] + s[i, j]
                                            if bf16_dot:
                                                sp[i, T.ramp(0, 1, KP)] = x86_bf16.pairs16(s.vload([i, 0], f"float32x{TK}"))
                                        # p @ v (keys past the end have p = 0; their index is clamped)
                                        if bf16_dot:
                                            for i2 in T.serial(RG // 2):  # pairs again: each value row loaded once for both
                                                i: T.let[T.int32] = i2 * 2
                                                for c in T.unroll(NV):
                                                    pv: T.let[T.float32x32] = x86_bf16.dot_chains(
                                                        [(x86_bf16.halves(T.broadcast(sp[i, kp], TK), T.broadcast(sp[i + 1, kp], TK)),
                                                          x86_bf16.halves(tile_row(vt, hk, tile, kp, c * TK, "int32"), tile_row(vt, hk, tile, kp, c * TK, "int32")))
                                                         for kp in range(KP)], chains=2, lanes=2 * TK,
                                                        init=x86_bf16.halves(acc.vload([i, c * TK], f"float32x{TK}"), acc.vload([i + 1, c * TK], f"float32x{TK}")))
                                                    acc[i, T.ramp(c * TK, 1, TK)] = x86_bf16.half(pv, 0)
                                                    acc[i + 1, T.ramp(c * TK, 1, TK)] = x86_bf16.half(pv, 1)
                                        else:
                                            for i in T.serial(RG):
                                                for c in T.unroll(d_v // VD):
                                                    acc[i, T.ramp(c * VD, 1, VD)] = tree_sum(
                                                        [acc.vload([i, c * VD], f"float32x{VD}")]
                                                        + [T.broadcast(s[i, j], VD) * T.Cast(f"float32x{VD}", v.vload(
                                                            [kv0 + T.min(k_start + j, n_kv - 1), hk, c * VD], f"{dtype}x{VD}"))
                                                           for j in range(TK)])
                                    for i in T.serial(RG):
                                        l[i] = reduce_lanes(lv.vload([i, 0], f"float32x{TK}"), TK, lambda a, c: a + c)
                                    for i in T.serial(RG):
                                        if i // G < rows:
                                            if visible_end(causal, n_kv, n_q, r0 + i // G) > 0:
                                                for dd in T.vectorized(d_v):
                                                    output[q0 + r0 + i // G, hk * G + i % G, dd] = T.Cast(dtype, acc[i, dd] / l[i])
                                                lse[q0 + r0 + i // G, hk * G + i % G] = m[i] + T.log2(l[i])
                                            else:  # no visible key: output 0 and lse -5e4, as TVM's kernels
                                                for dd in T.serial(d_v):
                                                    output[q0 + r0 + i // G, hk * G + i % G, dd] = T.Cast(dtype, T.float32(0))
                                                lse[q0 + r0 + i // G, hk * G + i % G] = T.float32(NEG)

    func = with_any_greater(batch_prefill_ragged_kv)
    return x86_bf16.with_helpers(func) if bf16_dot else func

