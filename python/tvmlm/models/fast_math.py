"""Vectorizable math for kernels: float32 exp2 and SiLU (LLVM lowers the vector forms of exp and
sigmoid to one libm call per lane, which made SiLU * up most of its kernel's time on CPU), and a
shuffle-tree reduction of a vector's lanes."""

from __future__ import annotations

from tvm.script import tirx as T

_LOG2E = 1.4426950408889634


def fast_exp2(x):
    """2**x for float32 x in [-126, 127] (below -126: 2**-126), as plain arithmetic that vectorizes:
    Cephes' exp2f polynomial, relative error ~2e-7."""
    x = T.max(x, T.float32(-126.0))
    n = T.floor(x + T.float32(0.5))
    f = x - n
    p = T.float32(1.535336188319500e-4)
    for c in (1.339887440266574e-3, 9.618437357674640e-3, 5.550332471162809e-2, 2.402264791363012e-1, 6.931472028550421e-1):
        p = p * f + T.float32(c)
    p = p * f + T.float32(1.0)
    scale = T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))
    return p * scale


def silu(x):
    """x * sigmoid(x) for float32 x, with fast_exp2; exp(-x) is clamped to 2**126, so for x below
    about -88 the result is x * 2**-126 (|x| * 1e-38) instead of ~0."""
    return x / (T.float32(1.0) + fast_exp2(T.min(x * T.float32(-_LOG2E), T.float32(126.0))))


def reduce_lanes(v, width: int, combine):
    """Reduce the `width` lanes of vector `v` to a scalar with `combine` (a shuffle tree)."""
    width //= 2
    while width >= 1:
        v = combine(T.Shuffle([v], list(range(width))), T.Shuffle([v], list(range(width, 2 * width))))
        width //= 2
    return v
