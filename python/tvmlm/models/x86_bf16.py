"""AVX-512 BF16 dot products for TIR kernels: `vdpbf16ps` (two bfloat16 multiply-adds per float32
lane, twice the multiply-adds of a float32 FMA per instruction).

TVM 0.27 cannot call the LLVM intrinsic from TIR: its pipeline always runs BF16ComputeLegalize and
BF16StorageLegalize, which turn `bfloat16x32` operands into float32 or uint16 vectors, and the
intrinsic wants `<32 x bfloat>`. So the kernels keep bfloat16 pairs in int32 lanes (the low half is
the even element), and call two tiny LLVM IR functions that bitcast and call the intrinsics. The IR
is linked into the kernel's LLVM module by the `pragma_import_llvm` attribute (`with_helpers`), and
the functions are `alwaysinline`, so the result is the bare instruction.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .cpu_features import link_llvm_ir, llvm_has

LANES = 16  # float32 lanes of one 512-bit register

LLVM_IR = r"""
define internal <16 x float> @tvmlm_dpbf16(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) #0 {
  %x = bitcast <16 x i32> %a to <32 x bfloat>
  %y = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %x, <32 x bfloat> %y)
  ret <16 x float> %r
}
define internal <32 x float> @tvmlm_dpbf16x2(<32 x float> %acc, <32 x i32> %a, <32 x i32> %b) #0 {
  %acc0 = shufflevector <32 x float> %acc, <32 x float> poison, <16 x i32> <i32 0, i32 1, i32 2, i32 3, i32 4, i32 5, i32 6, i32 7, i32 8, i32 9, i32 10, i32 11, i32 12, i32 13, i32 14, i32 15>
  %acc1 = shufflevector <32 x float> %acc, <32 x float> poison, <16 x i32> <i32 16, i32 17, i32 18, i32 19, i32 20, i32 21, i32 22, i32 23, i32 24, i32 25, i32 26, i32 27, i32 28, i32 29, i32 30, i32 31>
  %a0 = shufflevector <32 x i32> %a, <32 x i32> poison, <16 x i32> <i32 0, i32 1, i32 2, i32 3, i32 4, i32 5, i32 6, i32 7, i32 8, i32 9, i32 10, i32 11, i32 12, i32 13, i32 14, i32 15>
  %a1 = shufflevector <32 x i32> %a, <32 x i32> poison, <16 x i32> <i32 16, i32 17, i32 18, i32 19, i32 20, i32 21, i32 22, i32 23, i32 24, i32 25, i32 26, i32 27, i32 28, i32 29, i32 30, i32 31>
  %b0 = shufflevector <32 x i32> %b, <32 x i32> poison, <16 x i32> <i32 0, i32 1, i32 2, i32 3, i32 4, i32 5, i32 6, i32 7, i32 8, i32 9, i32 10, i32 11, i32 12, i32 13, i32 14, i32 15>
  %b1 = shufflevector <32 x i32> %b, <32 x i32> poison, <16 x i32> <i32 16, i32 17, i32 18, i32 19, i32 20, i32 21, i32 22, i32 23, i32 24, i32 25, i32 26, i32 27, i32 28, i32 29, i32 30, i32 31>
  %r0 = call <16 x float> @tvmlm_dpbf16(<16 x float> %acc0, <16 x i32> %a0, <16 x i32> %b0)
  %r1 = call <16 x float> @tvmlm_dpbf16(<16 x float> %acc1, <16 x i32> %a1, <16 x i32> %b1)
  %r = shufflevector <16 x float> %r0, <16 x float> %r1, <32 x i32> <i32 0, i32 1, i32 2, i32 3, i32 4, i32 5, i32 6, i32 7, i32 8, i32 9, i32 10, i32 11, i32 12, i32 13, i32 14, i32 15, i32 16, i32 17, i32 18, i32 19, i32 20, i32 21, i32 22, i32 23, i32 24, i32 25, i32 26, i32 27, i32 28, i32 29, i32 30, i32 31>
  ret <32 x float> %r
}
define internal <8 x i32> @tvmlm_bf16_pairs(<16 x float> %v) #0 {
  %h = call <16 x bfloat> @llvm.x86.avx512bf16.cvtneps2bf16.512(<16 x float> %v)
  %r = bitcast <16 x bfloat> %h to <8 x i32>
  ret <8 x i32> %r
}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
declare <16 x bfloat> @llvm.x86.avx512bf16.cvtneps2bf16.512(<16 x float>)
attributes #0 = { alwaysinline nounwind "target-features"="+avx512f,+avx512bf16" }
"""


def with_helpers(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """`func` with this module's LLVM IR linked in."""
    return link_llvm_ir(func, LLVM_IR)


def supported(target: tvm.target.Target) -> bool:
    """Whether `target` (llvm) has AVX-512 BF16."""
    return llvm_has(target, "avx512f", "avx512bf16")


def dot(acc, a, b, lanes: int = LANES):
    """acc (float32x16) + per lane: a.lo * b.lo + a.hi * b.hi, for int32x16 `a`, `b` holding bfloat16 pairs.
    With `lanes` = 32 (float32x32, int32x32) it is two instructions on the two 16-lane halves."""
    if lanes == 2 * LANES:
        return T.call_pure_extern(f"float32x{lanes}", "tvmlm_dpbf16x2", acc, a, b)
    return T.call_pure_extern("float32x16", "tvmlm_dpbf16", acc, a, b)


def halves(lo, hi):
    """One 32-lane vector of two 16-lane ones (lo in lanes 0-15): two rows computed together, so
    that an operand both share (`halves(row, row)`) is loaded into a register once."""
    return T.Shuffle([lo, hi], list(range(2 * LANES)))


def half(v, which: int):
    """Lanes 0-15 (which = 0) or 16-31 (which = 1) of a 32-lane vector."""
    return T.Shuffle([v], list(range(which * LANES, (which + 1) * LANES)))


def dot_chains(pairs: list, chains: int, init=None, lanes: int = LANES):
    """init (or 0) + the sum of dot(a, b) over `pairs` of (a, b), in `chains` independent
    accumulators (the instruction's latency is several cycles) added at the end; `lanes` 16 or 32."""
    zero = T.broadcast(T.float32(0), lanes)
    sums = []
    for c in range(min(chains, len(pairs))):
        acc = init if c == 0 and init is not None else zero
        for a, b in pairs[c::chains]:
            acc = dot(acc, a, b, lanes)
        sums.append(acc)
    while len(sums) > 1:
        sums = [sums[i] + sums[i + 1] if i + 1 < len(sums) else sums[i] for i in range(0, len(sums), 2)]
    return sums[0]


def pairs16(v):
    """float32x16 -> int32x8: lanes 2i, 2i+1 rounded to bfloat16 (nearest even) and packed in lane i."""
    return T.call_pure_extern("int32x8", "tvmlm_bf16_pairs", v)


def bits(x):
    """The bfloat16 bit pattern (in the low 16 bits of a uint32) of float32 `x`, rounded to nearest
    even as `vcvtneps2bf16` does (NaN aside). Plain integer arithmetic: vectorizes anywhere."""
    u = T.reinterpret("uint32", x)
    return T.shift_right(u + T.uint32(0x7FFF) + T.bitwise_and(T.shift_right(u, T.uint32(16)), T.uint32(1)), T.uint32(16))


def pair(lo, hi):
    """int32 holding bfloat16(lo) in its low half and bfloat16(hi) in its high half."""
    return T.reinterpret("int32", T.bitwise_or(bits(lo), T.shift_left(bits(hi), T.uint32(16))))
