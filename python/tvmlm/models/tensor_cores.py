"""Tensor cores for float16 matmuls on CUDA, through dlight's Matmul rule (MatmulTensorization).

The rule tensorizes with WMMA 16x16x16 intrinsics (shared.dyn tiles of 128 x 128 x 64, four
warps per block, software pipelined) when the target is sm_70+, the inputs are float16 and no
static matmul dim is 64 or less: batch_prefill's projections (M = tokens) qualify;
decode's (M = 1) stay GEMVs and batch_decode's are batched GEMVs scheduled before the rule runs.

`Schedule.tensorize` deep-copies the intrinsic through a JSON round trip; with apache-tvm-ffi
0.1.15 that round trip segfaults for any TVM object (TVM 0.27.0.post1 is built against 0.1.14),
so where the installed tvm_ffi is not the one the pin names, every kernel is marked
`dlight.do_not_tensorize` and matmuls take the SIMT path instead of crashing the compile.
"""

from __future__ import annotations

import tvm

#: tvm_ffi versions whose JSON round trip works with the pinned apache-tvm (see pyproject.toml).
TENSORIZE_SAFE_FFI = ("0.1.14",)


def tensorize_available() -> bool:
    """Whether s_tir tensorize can run in this process (the tvm_ffi it links is a safe one)."""
    import tvm_ffi

    version = getattr(tvm_ffi, "__version__", "")
    return any(version == v or version.startswith(v + ".") for v in TENSORIZE_SAFE_FFI)


def passes() -> list[tvm.transform.Pass]:
    """Nothing when tensorize works (dlight's Matmul chooses tensor cores itself), else the opt-out."""
    return [] if tensorize_available() else [opt_out_of_tensor_cores()]


def opt_out_of_tensor_cores() -> tvm.transform.Pass:
    """Mark every PrimFunc `dlight.do_not_tensorize`: matmuls take dlight's SIMT schedule."""

    @tvm.transform.module_pass(opt_level=0, name="tvmlm_no_tensorize")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tvm.tirx.PrimFunc):
                mod[gv] = func.with_attr("dlight.do_not_tensorize", True)
        return mod

    return _pass
