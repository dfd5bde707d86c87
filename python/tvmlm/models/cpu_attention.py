"""Faster CPU attention kernels for TVM's TIRPagedKVCache.

TVM registers fully serial, scalar TIR attention kernels for the llvm target (``_attention_prefill_ragged_cpu``,
``_attention_prefill_cpu`` in ``tvm.relax.frontend.nn.llm._prefill_kernels``): they visit every (query, key) pair
including causally masked ones, branch on ``rotary_mode`` in the innermost loop and never run in parallel.
:func:`replace_cpu_attention_kernels` swaps those PrimFuncs (keeping their GlobalVars, so the
``vm.builtin.paged_attention_kv_cache_create`` arguments still point at them) for kernels with the same
signature and semantics that

* run in parallel over (block of query rows, kv head): each iteration owns its local buffers;
* visit only the keys the causal mask allows (``col < kv_len - qo_len + row + 1``), in tiles of
  ``_SCORE_TILE`` keys (ragged prefill) or of one page (paged kernels);
* keep the ``group_size`` query heads sharing a kv head together, so each key/value row is loaded once per group;
* use an online softmax in float32 (scores in log2 space, pre-scaled by ``sm_scale * log2(e)``), and write
  ``lse = max + log2(sum)`` exactly as the originals do (the cache merges attention states with it);
* have explicitly vectorized inner loops over head_dim.

Causal rows are balanced across threads by pairing block ``i`` with block ``n_blocks - 1 - i`` in one iteration
(TVM's parallel loops are statically chunked).

rope: tvmlm uses ``RopeMode.NORMAL`` (rope applied to q and k before the attention call, ``rotary_mode == 0``).
The kernels assert ``rotary_mode == 0`` at run time; the pass leaves the originals in place when the module's KV
cache is created with ``RopeMode.INLINE``.

Sliding windows: a layer whose window is shorter than the context passes a *negative* ``sm_scale``
(models/llama.py); the kernels then use ``|sm_scale|`` and let a query at position p see only keys at
positions > p - window (transformers' ``sliding_window_overlay``), with the window compiled in
(``layer_sliding_window_size`` of the KV cache, which TVM's cache itself leaves inert when every
layer is "mha"). Positions come from ``q_rope_position`` and ``k_rope_pos_offset``, which the
cache fills for every kernel whatever the rope mode, so forked and chunked sequences (keys split
over pages and depths) are masked by absolute position. Keys before the window are not visited.

Degenerate rows with no visible key (only possible when ``kv_len < qo_len``, which the KV cache never produces)
get output 0 and lse ``-5e4``; the originals average all values there.
"""

from __future__ import annotations

import math
import re

import tvm
from tvm.relax.frontend.nn.llm._kernel_common import _get_seq_offset
from tvm.script import tirx as T

from . import x86_bf16
from .fast_math import any_greater, fast_exp2, reduce_lanes, with_any_greater

_MAX_SLACK = 8.0  # ragged prefill: how far (log2) scores may exceed the running max (p <= 2**8)
_SCORE_TILE = 16  # keys per ragged-prefill score tile: one float32x16 vector of scores
_QUERY_VECTORS = 24  # ragged prefill: query vectors (rows x grouped heads) per task share each key tile
_MAX_QUERY_ROWS = 8
_LOG2E = math.log2(math.e)
_NEG = -5e4

# name hints of the GlobalVars TIRPagedKVCache (llvm target) registers
_RAGGED = "tir_attention_prefill_ragged_cpu"
# IRModule attribute: the sliding window of a model with sliding-window layers (models/build.py)
SLIDING_WINDOW_ATTR = "tvmlm_sliding_window"
_PAGED = "tir_attention_prefill_cpu"


def _tree_sum(terms: list, chains: int = 4):
    """Sum of (product) vector expressions in `chains` independent running sums, so LLVM contracts
    each product into an FMA and the chains overlap; no memory accumulator."""
    sums = []
    for c in range(min(chains, len(terms))):
        acc = terms[c]
        for t in terms[c + chains :: chains]:
            acc = acc + t
        sums.append(acc)
    while len(sums) > 1:
        sums = [sums[i] + sums[i + 1] if i + 1 < len(sums) else sums[i] for i in range(0, len(sums), 2)]
    return sums[0]


def _window_begin(sm_scale, q_pos, k_pos0, window: int):
    """First key index (from the key at position k_pos0) a query at position q_pos may see: 0, or
    on a sliding-window layer (negative sm_scale) the first of the last `window` positions."""
    if not window:
        return 0
    return T.if_then_else(sm_scale < T.float32(0), T.max(q_pos - k_pos0 - (window - 1), 0), 0)


def _in_window(j, end, beg, window: int):
    """j < end, and j >= beg on a kernel compiled with a sliding window."""
    return j < end if not window else T.And(j < end, j >= beg)


@T.macro
def _start_online_softmax(m, l, acc, rows, width):
    """The empty state of `rows` online softmaxes: running max -1e30, sum 0, accumulator 0."""
    for i in T.serial(rows):
        m[i] = T.float32(-1e30)
        l[i] = T.float32(0)
        for dd in T.vectorized(width):
            acc[i, dd] = T.float32(0)


@T.macro
def _attend_pages(q, output, lse, row, b, hk, kbegin, kend, pages, page_values, pg0, length_info, sliding_window, sm_scale,
                  G, TK, D, VQ, NQ, page_size, dtype, window):
    """output[row] and lse[row] for the G query heads of kv head hk in q[row]: attention over keys [kbegin, kend) of
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
        qf[g, dd] = T.Cast("float32", q[row, hk * G + g, dd]) * T.abs(sm_scale) * _LOG2E
    _start_online_softmax(m, l, acc, G, D)
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
                s[g, j] = T.if_then_else(_in_window(j, nk, j0, window), reduce_lanes(_tree_sum([
                    qf.vload([g, c * VQ], f"float32x{VQ}")
                    * T.Cast(f"float32x{VQ}", pages.vload([slot_page[j], 0, hk, slot_off[j], c * VQ], f"{dtype}x{VQ}"))
                    for c in range(NQ)]), VQ, lambda a, c: a + c), T.float32(-1e30))
        for g in T.serial(G):
            tmax: T.let[T.float32] = T.max(m[g], reduce_lanes(s.vload([g, 0], f"float32x{TK}"), TK, T.max))
            alpha[g] = fast_exp2(m[g] - tmax)
            m[g] = tmax
            for j in T.vectorized(TK):
                s[g, j] = T.if_then_else(_in_window(j, nk, j0, window), fast_exp2(s[g, j] - tmax), T.float32(0))
            l[g] = l[g] * alpha[g] + reduce_lanes(s.vload([g, 0], f"float32x{TK}"), TK, lambda a, c: a + c)
            for c in T.unroll(NQ):
                acc[g, T.ramp(c * VQ, 1, VQ)] = _tree_sum(
                    [acc.vload([g, c * VQ], f"float32x{VQ}") * T.broadcast(alpha[g], VQ)]
                    + [T.broadcast(s[g, j], VQ) * T.Cast(f"float32x{VQ}", pages.vload(
                        [slot_page[j], 1, hk, slot_off[j], c * VQ], f"{dtype}x{VQ}")) for j in range(TK)])
    for g in T.serial(G):
        if kend > kbegin:  # a window can leave a query no key in these pages (a later prefill chunk)
            for dd in T.vectorized(D):
                output[row, hk * G + g, dd] = T.Cast(dtype, acc[g, dd] / l[g])
            lse[row, hk * G + g] = m[g] + T.log2(l[g])
        else:  # no visible key: output 0 and lse -5e4, as TVM's kernels
            for dd in T.serial(D):
                output[row, hk * G + g, dd] = T.Cast(dtype, T.float32(0))
            lse[row, hk * G + g] = T.float32(_NEG)


def tile_row(buf, hk, tile, row: int, col: int, dtype: str):
    """16 lanes of a transposed tile (kt or vt): buf[hk, tile, row, col:col + 16], indexed in int64
    (see kt in ragged_prefill_cpu)."""
    return buf.vload([T.Cast("int64", hk), T.Cast("int64", tile), T.int64(row), T.int64(col)], f"{dtype}x{_SCORE_TILE}")


def _visible_end(causal, n_kv, n_q, row):
    """Keys [0, end) that query row `row` may see, of a sequence with n_q new tokens among n_kv
    (causal: the row's own position and before)."""
    return T.if_then_else(causal > 0, T.min(n_kv, n_kv - n_q + row + 1), n_kv)


def _vec_len(d: int) -> int:
    for v in (16, 8, 4, 2):
        if d % v == 0:
            return v
    return 1


def _bf16_dot_fits(d_qk: int, d_v: int) -> bool:
    """Whether the bf16 ragged kernel's layouts divide these head dims (q·k in dimension pairs,
    p @ v in 16-lane value chunks, a score tile of one 16-lane vector)."""
    return d_qk % 2 == 0 and d_v % x86_bf16.LANES == 0 and _SCORE_TILE == x86_bf16.LANES


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
    TK = _SCORE_TILE
    R = max(1, min(_MAX_QUERY_ROWS, _QUERY_VECTORS // G))  # query rows per task
    if bf16_dot and R * G % 2:
        R = R - 1 if R > 1 else 2  # the bf16 passes take query vectors in pairs
    RG = R * G
    VD = _vec_len(d_v)  # lanes of one p @ v output chunk
    scale_log2e = _LOG2E
    if bf16_dot and not _bf16_dot_fits(d_qk, d_v):
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
                                    kend: T.let[T.int32] = _visible_end(causal, n_kv, n_q, r0 + rows - 1)  # the block's last row
                                    for i, dd in T.grid(RG, d_qk):
                                        qf[i, dd] = T.Cast("float32", q[q0 + T.min(r0 + i // G, n_q - 1), hk * G + i % G, dd]) * T.abs(sm_scale) * scale_log2e
                                    if bf16_dot:
                                        for i, dp in T.grid(RG, KR):
                                            qb[i, dp] = x86_bf16.pair(qf[i, dp * 2], qf[i, dp * 2 + 1])
                                    _start_online_softmax(m, l, acc, RG, d_v)
                                    for i, j in T.grid(RG, TK):
                                        lv[i, j] = T.float32(0)
                                    kbegin: T.let[T.int32] = _window_begin(sm_scale, q_rope_position[q0 + r0], k_rope_pos_offset[b], window)  # the block's first row
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
                                                end0: T.let[T.int32] = _visible_end(causal, n_kv, n_q, r0 + i // G) - k_start
                                                end1: T.let[T.int32] = _visible_end(causal, n_kv, n_q, r0 + (i + 1) // G) - k_start
                                                beg0: T.let[T.int32] = _window_begin(sm_scale, q_rope_position[q0 + T.min(r0 + i // G, n_q - 1)], k_rope_pos_offset[b], window) - k_start
                                                beg1: T.let[T.int32] = _window_begin(sm_scale, q_rope_position[q0 + T.min(r0 + (i + 1) // G, n_q - 1)], k_rope_pos_offset[b], window) - k_start
                                                s[i, T.ramp(0, 1, 2 * TK)] = T.Select(  # rows i and i + 1 of s, contiguous
                                                    x86_bf16.halves(visible(end0, beg0), visible(end1, beg1)),
                                                    x86_bf16.dot_chains([(x86_bf16.halves(T.broadcast(qb[i, dp], TK), T.broadcast(qb[i + 1, dp], TK)),
                                                                          x86_bf16.halves(tile_row(kt, hk, tile, dp, 0, "int32"), tile_row(kt, hk, tile, dp, 0, "int32")))
                                                                         for dp in range(KR)], chains=4, lanes=2 * TK),
                                                    T.broadcast(T.float32(-1e30), 2 * TK))
                                        else:
                                            for i in T.serial(RG):
                                                # scores of query vector i against the tile, masked past its last key
                                                row_end: T.let[T.int32] = _visible_end(causal, n_kv, n_q, r0 + i // G) - k_start
                                                row_beg: T.let[T.int32] = _window_begin(sm_scale, q_rope_position[q0 + T.min(r0 + i // G, n_q - 1)], k_rope_pos_offset[b], window) - k_start
                                                s[i, T.ramp(0, 1, TK)] = T.Select(
                                                    visible(row_end, row_beg),
                                                    _tree_sum([T.broadcast(qf[i, dd], TK) * tile_row(kt, hk, tile, dd, 0, "float32") for dd in range(d_qk)], chains=8),
                                                    T.broadcast(T.float32(-1e30), TK))
                                        for i in T.serial(RG):
                                            # online softmax (log2 space) with a lazy running max: m only has to
                                            # stay within 2**8 of the scores, so most tiles skip the horizontal
                                            # max, and the sum l is kept per lane (reduced once at the end)
                                            row_end: T.let[T.int32] = _visible_end(causal, n_kv, n_q, r0 + i // G) - k_start
                                            row_beg: T.let[T.int32] = _window_begin(sm_scale, q_rope_position[q0 + T.min(r0 + i // G, n_q - 1)], k_rope_pos_offset[b], window) - k_start
                                            if any_greater(s.vload([i, 0], f"float32x{TK}"), T.broadcast(m[i] + T.float32(_MAX_SLACK), TK)):
                                                tmax: T.let[T.float32] = reduce_lanes(s.vload([i, 0], f"float32x{TK}"), TK, T.max)
                                                alpha: T.let[T.float32] = fast_exp2(m[i] - tmax)
                                                m[i] = tmax
                                                for j in T.vectorized(TK):
                                                    lv[i, j] = lv[i, j] * alpha
                                                for dd in T.vectorized(d_v):
                                                    acc[i, dd] = acc[i, dd] * alpha
                                            for j in T.vectorized(TK):
                                                s[i, j] = T.if_then_else(_in_window(j, row_end, row_beg, window), fast_exp2(s[i, j] - m[i]), T.float32(0))
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
                                                    acc[i, T.ramp(c * VD, 1, VD)] = _tree_sum(
                                                        [acc.vload([i, c * VD], f"float32x{VD}")]
                                                        + [T.broadcast(s[i, j], VD) * T.Cast(f"float32x{VD}", v.vload(
                                                            [kv0 + T.min(k_start + j, n_kv - 1), hk, c * VD], f"{dtype}x{VD}"))
                                                           for j in range(TK)])
                                    for i in T.serial(RG):
                                        l[i] = reduce_lanes(lv.vload([i, 0], f"float32x{TK}"), TK, lambda a, c: a + c)
                                    for i in T.serial(RG):
                                        if i // G < rows:
                                            if _visible_end(causal, n_kv, n_q, r0 + i // G) > 0:
                                                for dd in T.vectorized(d_v):
                                                    output[q0 + r0 + i // G, hk * G + i % G, dd] = T.Cast(dtype, acc[i, dd] / l[i])
                                                lse[q0 + r0 + i // G, hk * G + i % G] = m[i] + T.log2(l[i])
                                            else:  # no visible key: output 0 and lse -5e4, as TVM's kernels
                                                for dd in T.serial(d_v):
                                                    output[q0 + r0 + i // G, hk * G + i % G, dd] = T.Cast(dtype, T.float32(0))
                                                lse[q0 + r0 + i // G, hk * G + i % G] = T.float32(_NEG)

    func = with_any_greater(batch_prefill_ragged_kv)
    return x86_bf16.with_helpers(func) if bf16_dot else func


def decode_paged_cpu(h_kv: int, h_q: int, d: int, dtype: str, sliding_window: bool = False, page_size: int = 16,
                     window: int = 0):
    """Drop-in replacement for ``_attention_decode_cpu(h_kv, h_q, d, dtype, sliding_window, ..., page_size)``.

    Parallel over (sequence, kv head); the ``group_size`` query heads of a kv head are scored against each
    key/value row together (each row is read once per kv head), keys are processed in tiles of ``page_size`` with an
    online float32 softmax. Sequences with no key get output 0 and lse ``-5e4``, as in the original."""
    from tvm.relax.frontend.nn.llm._kernel_common import _declare_length_info, _get_kv_chunk_len

    G = h_q // h_kv
    D = d
    TK = page_size
    VQ = _vec_len(D)
    NQ = D // VQ
    global_symbol = "batch_decode_paged_kv_cpu" + ("_sliding_window" if sliding_window else "")

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

        for p in T.parallel(B * h_kv):
            with T.sblock("attn"):
                T.reads()
                T.writes()
                b: T.let[T.int32] = p // h_kv
                hk: T.let[T.int32] = p % h_kv
                pg0: T.let[T.int32] = page_table_indptr[b]
                pg1: T.let[T.int32] = page_table_indptr[b + 1]
                kv_len: T.let[T.int32] = T.if_then_else(pg0 != pg1, _get_kv_chunk_len(pg1 - pg0, page_size, b, length_info, sliding_window), 0)
                kbegin: T.let[T.int32] = _window_begin(sm_scale, q_rope_position[b], k_rope_pos_offset[b], window)
                _attend_pages(Q, output, lse, b, b, hk, kbegin, kv_len, pages, page_table_values, pg0, length_info, sliding_window,
                              sm_scale, G, TK, D, VQ, NQ, page_size, dtype, window)

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
    VQ = _vec_len(D)
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
                kend: T.let[T.int32] = _visible_end(causal, kv_len, qo_len, row)
                kbegin: T.let[T.int32] = _window_begin(sm_scale, q_rope_position[tok], k_rope_pos_offset[b], window)
                _attend_pages(q, output, lse, tok, b, hk, kbegin, kend, pages, page_values, pg0, length_info, False,
                              sm_scale, G, TK, D, VQ, NQ, page_size, dtype, window)

    return batch_prefill_paged_kv


def _kv_cache_create_calls(mod: tvm.ir.IRModule) -> list:
    from tvm import relax

    found = []

    @relax.expr_functor.visitor
    class _Visitor(relax.PyExprVisitor):
        def visit_call_(self, call):  # noqa: N802
            if (
                isinstance(call.op, tvm.ir.Op)
                and call.op.name == "relax.call_pure_packed"
                and isinstance(call.args[0], relax.ExternFunc)
                and call.args[0].global_symbol == "vm.builtin.paged_attention_kv_cache_create"
            ):
                found.append(call)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            _Visitor().visit_expr(func)
    return found


# positions in the vm.builtin.paged_attention_kv_cache_create call (args[0] is the ExternFunc), see
# TIRPagedKVCache.__init__ in tvm/relax/frontend/nn/llm/kv_cache.py (llvm target)
_ARG_HEADS = (3, 4, 5, 6)  # num_attention_heads, num_key_value_heads, qk_head_dim, v_head_dim
_ARG_ROPE_MODE = 9
_ARG_RAGGED_PREFILL = 16
_ARG_PAGED_PREFILL = 17  # tir_attention_prefill_cpu (no sliding window)
_ARG_DECODE = 18  # tir_attention_decode_cpu
_ARG_DECODE_SLIDING = 20  # tir_attention_decode_cpu_sliding_window


def _int(arg):
    """The Python int of a relax PrimValue / IntImm argument, or None."""
    while not isinstance(arg, int) and hasattr(arg, "value"):
        arg = arg.value
    return arg if isinstance(arg, int) else None


def _q_dtype(func) -> str | None:
    """dtype of the q buffer of a CPU attention PrimFunc (the Python API of this TVM build has no buffer_map)."""
    if not isinstance(func, tvm.tirx.PrimFunc):
        return None
    match = re.search(r"\bq: T\.Buffer\(\([^)]*\)(?:, \"(\w+)\")?", func.script())
    if match is None:
        return None
    return match.group(1) or "float32"


def _decode_layout(func) -> tuple[str, int, int, int] | None:
    """(dtype, h_kv, page_size, head_dim) of the ``pages`` buffer of a CPU decode PrimFunc."""
    if not isinstance(func, tvm.tirx.PrimFunc):
        return None
    match = re.search(r'\bpages: T\.Buffer\(\("?\w+"?, 2, (\d+), (\d+), (\d+)\)(?:, "(\w+)")?', func.script())
    if match is None:
        return None
    return match.group(4) or "float32", int(match.group(1)), int(match.group(2)), int(match.group(3))


def _prefill_layout(func) -> tuple[str, int, int, int] | None:
    """(dtype, h_kv, page_size, head_dim) of the ``pages`` buffer of TVM's (non-sliding) CPU paged-prefill PrimFunc."""
    symbol = str((func.attrs or {}).get("global_symbol", "")) if isinstance(func, tvm.tirx.PrimFunc) else ""
    if symbol != "batch_prefill_paged_kv_cpu":
        return None
    return _decode_layout(func)


def _tir_kernel_gv(arg):
    fields = getattr(arg, "fields", None)
    if fields is not None and len(fields) == 2 and isinstance(fields[1], tvm.ir.GlobalVar):
        return arg.fields[1]
    return None


def replace_cpu_attention_kernels() -> tvm.transform.Pass:
    """Module pass: replace the KV cache's CPU attention PrimFuncs with the kernels of this module.

    Kernels are found through the ``vm.builtin.paged_attention_kv_cache_create`` call, so the GlobalVars it
    references are kept. Modules whose cache uses ``RopeMode.INLINE`` are left unchanged."""
    from tvm.relax.frontend.nn.llm.kv_cache import RopeMode

    @tvm.transform.module_pass(opt_level=0, name="tvmlm_replace_cpu_attention")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        replace = {}
        target = tvm.target.Target.current(allow_none=True)
        window = int((mod.attrs or {}).get(SLIDING_WINDOW_ATTR, 0))
        for call in _kv_cache_create_calls(mod):
            if len(call.args) <= _ARG_RAGGED_PREFILL:
                continue
            rope_mode = call.args[_ARG_ROPE_MODE]  # a relax PrimValue: an IntImm, or wraps one in .value
            rope_mode = _int(rope_mode)
            if rope_mode is None or rope_mode == int(RopeMode.INLINE):
                continue
            h_q, h_kv, d_qk, d_v = (_int(call.args[i]) for i in _ARG_HEADS)
            gv = _tir_kernel_gv(call.args[_ARG_RAGGED_PREFILL])
            dtype = _q_dtype(mod[gv]) if gv is not None else None
            if None in (h_q, h_kv, d_qk, d_v, dtype) or h_q % h_kv != 0:
                continue
            if isinstance(mod[gv], tvm.tirx.PrimFunc) and len(mod[gv].params) == 14:
                # a bfloat16 KV cache gets bfloat16 q, k, v: multiply them as such where the CPU can
                bf16_dot = dtype == "bfloat16" and _bf16_dot_fits(d_qk, d_v) and target is not None and x86_bf16.supported(target)
                func = ragged_prefill_cpu(h_kv, h_q, d_qk, d_v, str(dtype), bf16_dot=bf16_dot, window=window)
                replace[gv] = func.with_attrs(dict(mod[gv].attrs or {}))
            gv = _tir_kernel_gv(call.args[_ARG_PAGED_PREFILL])
            if gv is not None and isinstance(mod[gv], tvm.tirx.PrimFunc) and len(mod[gv].params) == 15 and d_qk == d_v:
                layout = _prefill_layout(mod[gv])
                if layout is not None and layout[1] == h_kv and layout[3] == d_qk:
                    func = prefill_paged_cpu(h_kv, h_q, d_qk, layout[0], page_size=layout[2], window=window)
                    replace[gv] = func.with_attrs(dict(mod[gv].attrs or {}))
            for pos, sliding in ((_ARG_DECODE, False), (_ARG_DECODE_SLIDING, True)):
                gv = _tir_kernel_gv(call.args[pos]) if len(call.args) > pos else None
                if gv is None or not isinstance(mod[gv], tvm.tirx.PrimFunc) or len(mod[gv].params) != 13:
                    continue
                if not str(mod[gv].attrs["global_symbol"]).startswith("batch_decode_paged_kv_cpu"):
                    continue
                layout = _decode_layout(mod[gv])
                if layout is None or layout[1] != h_kv or layout[3] != d_qk or d_qk != d_v:
                    continue
                dtype, _, page_size, _ = layout
                func = decode_paged_cpu(h_kv, h_q, d_qk, dtype, sliding_window=sliding, page_size=page_size, window=window)
                replace[gv] = func.with_attrs(dict(mod[gv].attrs or {}))
        for gv, func in replace.items():
            mod[gv] = func
        return mod

    return _pass
