"""Vectorizable math for kernels: float32 exp2, SiLU and tanh-GELU (LLVM lowers the vector forms of exp and
sigmoid to one libm call per lane, which made SiLU * up most of its kernel's time on CPU), a
shuffle-tree reduction of a vector's lanes, and a branch on "any lane greater" that needs none."""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .cpu_features import link_llvm_ir

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


def gelu_tanh(x):
    """GELU's tanh approximation (PyTorch's gelu(approximate="tanh")) for float32 x, as
    x * sigmoid(2 z) with z = sqrt(2 / pi) (x + 0.044715 x^3), which is 0.5 x (1 + tanh(z))."""
    z2 = x * (T.float32(1.5957691216057308) + T.float32(0.0713548162726009) * x * x)  # 2 z
    return x / (T.float32(1.0) + fast_exp2(T.min(z2 * T.float32(-_LOG2E), T.float32(126.0))))


def reduce_lanes(v, width: int, combine):
    """Reduce the `width` lanes of vector `v` to a scalar with `combine` (a shuffle tree)."""
    width //= 2
    while width >= 1:
        v = combine(T.Shuffle([v], list(range(width))), T.Shuffle([v], list(range(width, 2 * width))))
        width //= 2
    return v


# TIR cannot branch on a vector compare cheaply: its bool vectors are byte vectors, and reducing
# them is a shuffle tree. This LLVM IR (generic: no target features) bitcasts the <16 x i1> compare
# to an i16 mask, which is kmov + test on AVX-512. Linked into a kernel by `with_any_greater`.
_ANY_GREATER_IR = r"""
define internal i32 @tvmlm_any_greater16(<16 x float> %a, <16 x float> %b) #0 {
  %c = fcmp ogt <16 x float> %a, %b
  %m = bitcast <16 x i1> %c to i16
  %r = zext i16 %m to i32
  ret i32 %r
}
attributes #0 = { alwaysinline nounwind }
"""


def any_greater(a, b):
    """Whether any lane of float32x16 `a` is greater than the same lane of `b` (a kernel using it
    must go through `with_any_greater`)."""
    return T.call_pure_extern("int32", "tvmlm_any_greater16", a, b) != 0


def with_any_greater(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """`func` with `any_greater`'s LLVM IR linked in."""
    return link_llvm_ir(func, _ANY_GREATER_IR)
