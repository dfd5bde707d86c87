"""The paged CPU attention kernels: decode steps, and prefill tokens against keys already in the
cache's pages (prefix-cache hits, later prefill chunks). cpu_attention.py installs them in place of
TVM's."""

from __future__ import annotations

from tvm.relax.frontend.nn.llm._kernel_common import _get_seq_offset
from tvm.script import tirx as T

from .cpu_attention_tir import LOG2E, NEG, in_window, start_online_softmax, tree_sum, vec_len, visible_end, window_begin
from .fast_math import fast_exp2, reduce_lanes


# A decode step with fewer (sequence, kv head) pairs than DECODE_TASKS splits each pair's keys in
# KEY_SPLITS runs attended in parallel (constants: a split count computed at run time made LLVM
# take 8x longer on the kernel).
DECODE_TASKS = 8
KEY_SPLITS = 4


@T.macro
def attend_pages(q, output, lse, row, out_row, b, hk, kbegin, kend, pages, page_values, pg0, length_info, sliding_window, sm_scale,
                  G, TK, D, VQ, NQ, page_size, dtype, window):
    """output[out_row] and lse[out_row] for the G query heads of kv head hk in q[row]: attention over keys [kbegin, kend) of
    sequence b's pages, in tiles of TK keys with an online float32 softmax (scores in log2 space). Each key's
    page slot is looked up once for all G heads and for both K and V. Scores and p @ v are vector expressions
    (no loop-carried memory accumulators). Expands inside the caller's per-task sblock (the scratch buffers)."""
    qf = T.sblock_alloc_buffer((G, D), "float32")
    acc = T.sblock_alloc_buffer((G, D), "float32")
    s = T.sblock_alloc_buffer((G, TK), "float32")
    m = T.sblock_alloc_buffer((G,), "float32")
    l = T.sblock_alloc_buffer((G,), "float32")
    alpha = T.sblock_alloc_buffer((G,), "float32")
    slot_page = T.sblock_alloc_buffer((TK,), "int32")
    slot_off = T.sblock_alloc_buffer((TK,), "int32")
    for g, dd in T.grid(G, D):
        qf[g, dd] = T.Cast("float32", q[row, hk * G + g, dd]) * T.abs(sm_scale) * LOG2E
    start_online_softmax(m, l, acc, G, D)
    for tile in T.serial(kbegin // TK, (T.max(kend, 0) + TK - 1) // TK):
        k_start: T.let[T.int32] = tile * TK
        nk: T.let[T.int32] = T.min(TK, kend - k_start)
        j0: T.let[T.int32] = kbegin - k_start  # keys before it in this tile are outside the window
        for j in T.serial(TK):
            # keys past the tile's end repeat its last key (in range); their scores are masked
            off: T.let[T.int32] = _get_seq_offset(k_start + T.min(j, nk - 1), b, length_info, sliding_window)
            slot_page[j] = page_values[pg0 + off // page_size]
            slot_off[j] = off % page_size
            for g in T.unroll(G):
                s[g, j] = T.if_then_else(in_window(j, nk, j0, window), reduce_lanes(tree_sum([
                    qf.vload([g, c * VQ], f"float32x{VQ}")
                    * T.Cast(f"float32x{VQ}", pages.vload([slot_page[j], 0, hk, slot_off[j], c * VQ], f"{dtype}x{VQ}"))
                    for c in range(NQ)]), VQ, lambda a, c: a + c), T.float32(-1e30))
        for g in T.serial(G):
            tmax: T.let[T.float32] = T.max(m[g], reduce_lanes(s.vload([g, 0], f"float32x{TK}"), TK, T.max))
            alpha[g] = fast_exp2(m[g] - tmax)
            m[g] = tmax
            for j in T.vectorized(TK):
                s[g, j] = T.if_then_else(in_window(j, nk, j0, window), fast_exp2(s[g, j] - tmax), T.float32(0))
            l[g] = l[g] * alpha[g] + reduce_lanes(s.vload([g, 0], f"float32x{TK}"), TK, lambda a, c: a + c)
            for c in T.unroll(NQ):
                acc[g, T.ramp(c * VQ, 1, VQ)] = tree_sum(
                    [acc.vload([g, c * VQ], f"float32x{VQ}") * T.broadcast(alpha[g], VQ)]
                    + [T.broadcast(s[g, j], VQ) * T.Cast(f"float32x{VQ}", pages.vload(
                        [slot_page[j], 1, hk, slot_off[j], c * VQ], f"{dtype}x{VQ}")) for j in range(TK)])
    for g in T.serial(G):
        if kend > kbegin:  # a window can leave a query no key in these pages (a later prefill chunk)
            for dd in T.vectorized(D):
                output[out_row, hk * G + g, dd] = T.Cast(output.dtype, acc[g, dd] / l[g])
            lse[out_row, hk * G + g] = m[g] + T.log2(l[g])
        else:  # no visible key: output 0 and lse -5e4, as TVM's kernels
            for dd in T.serial(D):
                output[out_row, hk * G + g, dd] = T.Cast(output.dtype, T.float32(0))
            lse[out_row, hk * G + g] = T.float32(NEG)


def decode_paged_cpu(h_kv: int, h_q: int, d: int, dtype: str, sliding_window: bool = False, page_size: int = 16,
                     window: int = 0):
    """Drop-in replacement for ``_attention_decode_cpu(h_kv, h_q, d, dtype, sliding_window, ..., page_size)``.

    Parallel over (sequence, kv head, key split); the ``group_size`` query heads of a kv head are scored against each
    key/value row together (each row is read once per kv head), keys are processed in tiles of ``page_size`` with an
    online float32 softmax. Sequences with no key get output 0 and lse ``-5e4``, as in the original.

    Key splits (flash-decoding): with fewer (sequence, kv head) pairs than ``DECODE_TASKS`` (one sequence of a
    model with one or a few KV heads: Gemma 3 270M has one), each pair's keys are cut into ``KEY_SPLITS`` runs
    of whole tiles, attended in parallel into float32 partial outputs, then merged by their log-sum-exps.
    Without it one thread did a whole decode step's attention while the others waited."""
    from tvm.relax.frontend.nn.llm._kernel_common import _declare_length_info, _get_kv_chunk_len

    G = h_q // h_kv
    D = d
    TK = page_size
    VQ = vec_len(D)
    NQ = D // VQ
    global_symbol = "batch_decode_paged_kv_cpu" + ("_sliding_window" if sliding_window else "")

    @T.macro
    def attend_task(Q, pages, page_table_indptr, page_table_values, length_info, k_rope_pos_offset, q_rope_position,
                    sm_scale, out, out_lse, out_row, b, hk, sp, splits):
        """Sequence b, kv head hk into out[out_row]: all its visible keys (splits == 1), or run sp of `splits`
        runs of whole tiles (the first keeps the window's start inside its first tile)."""
        pg0: T.let[T.int32] = page_table_indptr[b]
        pg1: T.let[T.int32] = page_table_indptr[b + 1]
        kv_len: T.let[T.int32] = T.if_then_else(pg0 != pg1, _get_kv_chunk_len(pg1 - pg0, page_size, b, length_info, sliding_window), 0)
        kbegin: T.let[T.int32] = window_begin(sm_scale, q_rope_position[b], k_rope_pos_offset[b], window)
        if splits == 1:
            attend_pages(Q, out, out_lse, b, out_row, b, hk, kbegin, kv_len, pages, page_table_values, pg0, length_info,
                         sliding_window, sm_scale, G, TK, D, VQ, NQ, page_size, dtype, window)
        else:
            tile0: T.let[T.int32] = kbegin // TK
            per: T.let[T.int32] = ((kv_len + TK - 1) // TK - tile0 + splits - 1) // splits
            # bound once: a macro argument is substituted as an expression at every use
            k0: T.let[T.int32] = T.max(kbegin, (tile0 + sp * per) * TK)
            k1: T.let[T.int32] = T.min(kv_len, (tile0 + (sp + 1) * per) * TK)
            attend_pages(Q, out, out_lse, b, out_row, b, hk, k0, k1, pages, page_table_values, pg0, length_info,
                         sliding_window, sm_scale, G, TK, D, VQ, NQ, page_size, dtype, window)

    # pylint: disable=too-many-locals,too-many-statements
    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv(
        Q_handle: T.handle,
        pages_handle: T.handle,
        page_table_indptr_handle: T.handle,
        page_table_values_handle: T.handle,
        var_length_info: T.handle,  # [b] when sliding window = False, or otherwise [3, b]
        k_rope_pos_offset_handle: T.handle,
        q_rope_position_handle: T.handle,
        output_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "global_symbol": global_symbol})
        B = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        Q = T.match_buffer(Q_handle, (B, h_q, D), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, page_size, D), dtype)
        page_table_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32", elem_offset=page_indptr_elem_offset)
        page_table_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32", elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (B,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32", elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(output_handle, (B, h_q, D), dtype)
        lse = T.match_buffer(lse_handle, (B, h_q), "float32")
        length_info = _declare_length_info(var_length_info, B, sliding_window, length_info_elem_offset)

        assert rotary_mode == 0, "tvmlm CPU attention: rotary_mode 1 (RopeMode.INLINE) is not supported"

        if B * h_kv >= DECODE_TASKS:  # enough (sequence, kv head) pairs to keep every core busy
            for p in T.parallel(B * h_kv):
                with T.sblock("attn"):
                    T.reads()
                    T.writes()
                    b: T.let[T.int32] = p // h_kv
                    hk: T.let[T.int32] = p % h_kv
                    attend_task(Q, pages, page_table_indptr, page_table_values, length_info, k_rope_pos_offset, q_rope_position,
                                sm_scale, output, lse, b, b, hk, 0, 1)
        else:
            with T.sblock("root"):
                T.reads()
                T.writes()
                part = T.sblock_alloc_buffer((KEY_SPLITS * B, h_q, D), "float32")  # row: split * B + sequence
                part_lse = T.sblock_alloc_buffer((KEY_SPLITS * B, h_q), "float32")
                for p in T.parallel(B * h_kv * KEY_SPLITS):
                    with T.sblock("attn"):
                        T.reads()
                        T.writes()
                        b: T.let[T.int32] = p // (h_kv * KEY_SPLITS)
                        hk: T.let[T.int32] = p // KEY_SPLITS % h_kv
                        sp: T.let[T.int32] = p % KEY_SPLITS
                        row: T.let[T.int32] = sp * B + b
                        attend_task(Q, pages, page_table_indptr, page_table_values, length_info, k_rope_pos_offset,
                                    q_rope_position, sm_scale, part, part_lse, row, b, hk, sp, KEY_SPLITS)
                for p in T.parallel(B * h_q):
                    with T.sblock("merge"):
                        T.reads()
                        T.writes()
                        b: T.let[T.int32] = p // h_q
                        h: T.let[T.int32] = p % h_q
                        top = T.sblock_alloc_buffer((1,), "float32")
                        total = T.sblock_alloc_buffer((1,), "float32")
                        acc = T.sblock_alloc_buffer((D,), "float32")
                        top[0] = T.float32(NEG)
                        total[0] = T.float32(0)
                        for sp in T.unroll(KEY_SPLITS):
                            top[0] = T.max(top[0], part_lse[sp * B + b, h])
                        for dd in T.vectorized(D):
                            acc[dd] = T.float32(0)
                        for sp in T.unroll(KEY_SPLITS):
                            w: T.let[T.float32] = T.exp2(part_lse[sp * B + b, h] - top[0])
                            total[0] = total[0] + w
                            for dd in T.vectorized(D):
                                acc[dd] = acc[dd] + part[sp * B + b, h, dd] * w
                        if top[0] > T.float32(NEG):
                            for dd in T.vectorized(D):
                                output[b, h, dd] = T.Cast(dtype, acc[dd] / total[0])
                            lse[b, h] = top[0] + T.log2(total[0])
                        else:  # no visible key in any split
                            for dd in T.serial(D):
                                output[b, h, dd] = T.Cast(dtype, T.float32(0))
                            lse[b, h] = T.float32(NEG)

    return batch_decode_paged_kv



def prefill_paged_cpu(h_kv: int, h_q: int, d: int, dtype: str, page_size: int = 16, window: int = 0):
    """Drop-in replacement for ``_attention_prefill_cpu(h_kv, h_q, d, dtype, sliding_window=False, ...)``: prompt
    tokens attending to KV already in the cache's pages (prefix-cache hits, later prefill chunks).

    TVM's kernel walks ``max_num_pages * page_size`` rows (every page of the whole cache, not of the
    sequence) for each query token and head, serially: a 4-token prefix hit took 24 s with a 64-sequence cache.
    This one runs in parallel over (query token, kv head), visits only the sequence's own keys allowed by
    the mask, and shares each key/value row among the ``group_size`` query heads of its kv head."""
    from tvm.relax.frontend.nn.llm._kernel_common import _declare_length_info, _get_kv_chunk_len

    G = h_q // h_kv
    D = d
    TK = page_size
    VQ = vec_len(D)
    NQ = D // VQ

    # pylint: disable=too-many-locals,too-many-statements
    @T.prim_func(s_tir=True)
    def batch_prefill_paged_kv(
        var_q: T.handle,  # [total_len, h_q, d]
        var_q_indptr: T.handle,  # [batch_size + 1]
        var_pages: T.handle,  # [max_num_pages, 2, h_kv, page_size, d]
        var_page_indptr: T.handle,  # [batch_size + 1]
        var_page_values: T.handle,  # [nnz_pages]
        var_length_info: T.handle,  # [b]: last_page_len
        var_k_rope_pos_offset: T.handle,  # [b]
        var_q_rope_position: T.handle,  # [total_len]
        var_output: T.handle,  # [total_len, h_q, d]
        var_lse: T.handle,  # [total_len, h_q]
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "global_symbol": "batch_prefill_paged_kv_cpu"})
        batch_size = T.int32()
        total_len = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        q_indptr_elem_offset = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        q = T.match_buffer(var_q, (total_len, h_q, D), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        pages = T.match_buffer(var_pages, (max_num_pages, 2, h_kv, page_size, D), dtype)
        page_indptr = T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", elem_offset=page_indptr_elem_offset)
        page_values = T.match_buffer(var_page_values, (nnz_pages,), "int32", elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (total_len,), "int32", elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(var_output, (total_len, h_q, D), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), "float32")
        length_info = _declare_length_info(var_length_info, batch_size, False, length_info_elem_offset)

        assert rotary_mode == 0, "tvmlm CPU attention: rotary_mode 1 (RopeMode.INLINE) is not supported"

        for p in T.parallel(total_len * h_kv):
            with T.sblock("attn"):
                T.reads()
                T.writes()
                seq = T.sblock_alloc_buffer((1,), "int32")
                tok: T.let[T.int32] = p // h_kv
                hk: T.let[T.int32] = p % h_kv
                seq[0] = 0
                for bb in T.serial(batch_size):  # the sequence this token belongs to (batches are small)
                    if q_indptr[bb] <= tok:
                        seq[0] = bb
                b: T.let[T.int32] = seq[0]
                pg0: T.let[T.int32] = page_indptr[b]
                pg1: T.let[T.int32] = page_indptr[b + 1]
                kv_len: T.let[T.int32] = T.if_then_else(pg0 != pg1, _get_kv_chunk_len(pg1 - pg0, page_size, b, length_info, False), 0)
                qo_len: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                row: T.let[T.int32] = tok - q_indptr[b]
                kend: T.let[T.int32] = visible_end(causal, kv_len, qo_len, row)
                kbegin: T.let[T.int32] = window_begin(sm_scale, q_rope_position[tok], k_rope_pos_offset[b], window)
                attend_pages(q, output, lse, tok, tok, b, hk, kbegin, kend, pages, page_values, pg0, length_info, False,
                              sm_scale, G, TK, D, VQ, NQ, page_size, dtype, window)

    return batch_prefill_paged_kv
