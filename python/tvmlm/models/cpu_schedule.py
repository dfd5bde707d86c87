"""CPU schedules for the kernels that dominate a step: the weight matmuls (and fused elementwise
kernels, see `schedule_elementwise`). On AVX-512 VNNI and AVX2 hosts the packed-weight matmuls are
replaced before this runs (models/cpu_int8_matmul.py); this schedule serves float weights and other
hosts.

TVM's default llvm pipeline leaves matmuls as naive single-threaded loops, and its dlight CPU GEMV
rule is several times slower than this hand schedule. One schedule serves decode
(M = batch, 1..N) and prefill (M = chunk): for each tile of 8 weight rows (run in parallel over the
thread pool), every activation row is multiplied against that tile while it sits in L1, with a
16-lane vector accumulator per output (rfactor over k) that is summed once at the end.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

ROW_TILE = 8  # weight rows per parallel task
ROW_UNROLL = 2  # rows computed together in registers
LANES = 16  # k elements per vector accumulator (one AVX-512 register of f32)


def _static_extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _matmul_block(sch: s_tir.Schedule):
    """The single reduction block of `C[m..., n] += A[m..., k] * W[n, k]`, or None."""
    blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
    reductions = []
    for block in blocks:
        stmt = sch.get(block)
        kinds = [iv.iter_type for iv in stmt.iter_vars]
        if tirx.IterVar.CommReduce in kinds:
            reductions.append((block, stmt, kinds))
    if len(reductions) != 1:
        return None
    block, stmt, kinds = reductions[0]
    # Spatial..., then exactly one reduction axis last; two inputs: activations and a 2-D weight.
    if kinds[-1] != tirx.IterVar.CommReduce or tirx.IterVar.CommReduce in kinds[:-1] or len(kinds) < 2:
        return None
    if len(stmt.reads) != 2 or len(stmt.writes) != 1:
        return None
    if not any(len(r.source.shape) in (2, 4) for r in stmt.reads):  # a weight, dense or block-packed
        return None
    if not stmt.name_hint.startswith(("NT_matmul", "matmul")):
        return None
    return block


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001 - a func without a root block is simply not ours
        return False


def schedule_matmul(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """Return `func` scheduled, or None when it is not a weight matmul this schedule handles."""
    sch = s_tir.Schedule(func)
    block = _matmul_block(sch)
    if block is None:
        return None
    consumers = sch.get_consumers(block)
    # A packed weight's dequantize stage (models/quant.py), if any: placed under the row tile below,
    # so each tile of rows is dequantized once, into a stack buffer, and reused for every activation row.
    producers = [b for b in sch.get_producers(block) if sch.get(b).name_hint == "dequantize"]
    loops = sch.get_loops(block)
    *m_loops, n, k = loops
    n_extent, k_extent = _static_extent(sch, n), _static_extent(sch, k)
    if n_extent is None or k_extent is None:
        return None
    lanes = next((v for v in (LANES, 8, 4) if k_extent % v == 0), None)
    if lanes is None:
        return None
    m = sch.fuse(*m_loops) if len(m_loops) > 1 else m_loops[0]
    n_o, n_i = sch.split(n, factors=[None, ROW_TILE])
    k_o, k_i = sch.split(k, factors=[None, lanes])
    sch.reorder(n_o, m, n_i, k_o, k_i)
    # The lane axis goes last in the accumulator buffer, so each row's 16 partial sums are one
    # contiguous vector (factor_axis=0 would interleave rows: strided vector loads and stores).
    rf = sch.rfactor(k_i, factor_axis=len(sch.get(block).writes[0].source.shape))
    sch.set_scope(rf, 0, "local")
    rf_n_o, rf_m, rf_n_i, rf_k_o, rf_k_i = sch.get_loops(rf)
    n_i_o, n_i_i = sch.split(rf_n_i, factors=[None, ROW_UNROLL])
    sch.reorder(n_i_o, rf_k_o, n_i_i, rf_k_i)
    sch.vectorize(rf_k_i)
    sch.unroll(n_i_i)
    sch.reverse_compute_at(block, rf_m)
    for consumer in consumers:
        sch.reverse_compute_at(consumer, rf_m)
    for dequant in producers:
        sch.compute_at(dequant, rf_n_o)
        sch.set_scope(dequant, 0, "local")
        sch.vectorize(sch.get_loops(dequant)[-1])  # the 16 elements of a half block
    sch.parallel(rf_n_o)
    sch.decompose_reduction(rf, rf_k_o)
    return sch.mod["main"]


def schedule_cpu_kernels(target: tvm.target.Target) -> tvm.transform.Pass:
    """Module pass: schedule every weight matmul PrimFunc; leave the rest to TVM's defaults."""

    @tvm.transform.module_pass(opt_level=0, name="tvmlm_cpu_schedule")
    def _pass(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs and func.attrs.get("tirx.is_scheduled"):
                continue
            scheduled = schedule_matmul(func)
            if scheduled is None:
                scheduled = schedule_elementwise(func)
            if scheduled is not None:
                updates[gv] = scheduled.with_attr("tirx.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def schedule_elementwise(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """Schedule a fused elementwise kernel (e.g. split + SiLU * up): producers inlined into the
    last block, its innermost loop vectorized, the rows (outer loops) run in parallel. TVM's
    default leaves these as one serial scalar loop nest (8% of a 512-token prefill here)."""
    sch = s_tir.Schedule(func)
    if not _has_root(sch):
        return None
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if not blocks:
        return None
    for block in blocks:
        if any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars):
            return None  # reductions: dlight's CPU Reduction rule takes those
    for block in blocks[:-1]:
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - not inlinable: not a kernel of this shape
            return None
    last = blocks[-1]
    loops = sch.get_loops(last)
    if len(loops) < 2:
        return None
    inner = _static_extent(sch, loops[-1])
    if inner is None or inner % LANES:
        return None
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    _, vec = sch.split(loops[-1], factors=[None, LANES])
    sch.vectorize(vec)
    sch.parallel(outer)
    return sch.mod["main"]
