"""TIR pieces the CPU attention kernels share (cpu_attention_ragged.py, cpu_attention_paged.py):
vector sums, the causal and sliding-window key ranges, the online softmax's empty state."""

from __future__ import annotations

import math

from tvm.script import tirx as T

LOG2E = math.log2(math.e)
NEG = -5e4  # lse of a query row with no visible key (as TVM's kernels)


def tree_sum(terms: list, chains: int = 4):
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


def window_begin(sm_scale, q_pos, k_pos0, window: int):
    """First key index (from the key at position k_pos0) a query at position q_pos may see: 0, or
    on a sliding-window layer (negative sm_scale) the first of the last `window` positions."""
    if not window:
        return 0
    return T.if_then_else(sm_scale < T.float32(0), T.max(q_pos - k_pos0 - (window - 1), 0), 0)


def in_window(j, end, beg, window: int):
    """j < end, and j >= beg on a kernel compiled with a sliding window."""
    return j < end if not window else T.And(j < end, j >= beg)


@T.macro
def start_online_softmax(m, l, acc, rows, width):
    """The empty state of `rows` online softmaxes: running max -1e30, sum 0, accumulator 0."""
    for i in T.serial(rows):
        m[i] = T.float32(-1e30)
        l[i] = T.float32(0)
        for dd in T.vectorized(width):
            acc[i, dd] = T.float32(0)


def visible_end(causal, n_kv, n_q, row):
    """Keys [0, end) that query row `row` may see, of a sequence with n_q new tokens among n_kv
    (causal: the row's own position and before)."""
    return T.if_then_else(causal > 0, T.min(n_kv, n_kv - n_q + row + 1), n_kv)


def vec_len(d: int) -> int:
    for v in (16, 8, 4, 2):
        if d % v == 0:
            return v
    return 1
