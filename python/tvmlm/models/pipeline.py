"""The Relax pipeline tvmlm compiles with: TVM's per-target passes plus our kernel schedules."""

from __future__ import annotations

import tvm
from tvm import relax


def relax_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """On CPUs with AVX-512 VNNI or AVX2, packed-weight matmuls stored row-interleaved (build_module chose
    int8 activations for them) become int8 kernels (models/cpu_int8_matmul.py); the others
    dequantize to float32."""
    if target.kind.name == "llvm":
        from tvm.relax.backend.cpu_generic import pipeline as tvm_pipeline

        from . import cpu_int8_matmul, cpu_norm
        from .cpu_attention import replace_cpu_attention_kernels
        from .cpu_schedule import schedule_cpu_kernels

        legalize_map = cpu_norm.legalize_map()
        prologue = [replace_cpu_attention_kernels()]
        if cpu_int8_matmul.supported(target):
            prologue.append(cpu_int8_matmul.replace_packed_matmuls())
        schedule = [schedule_cpu_kernels(target)]
    elif target.kind.name == "cuda":
        from tvm.relax.backend.cuda import pipeline as tvm_pipeline

        prologue = []
        legalize_map = None
        schedule = cuda_schedule_passes()
    else:
        raise ValueError(f"no tvmlm pipeline for target kind {target.kind.name!r}; supported: llvm, cuda")

    @tvm.transform.module_pass(opt_level=0, name="tvmlm_pipeline")
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            passes = [
                *prologue,
                # nn.Linear is matmul(x, permute_dims(w)): fuse it so weights are never transposed at run time.
                relax.transform.FuseTransposeMatmul(),
                *tvm_pipeline.library_dispatch_passes(target),
                relax.transform.LegalizeOps(legalize_map),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                *schedule,
                *tvm_pipeline.dataflow_lower_passes(target),
                *tvm_pipeline.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def cuda_schedule_passes() -> list[tvm.transform.Pass]:
    """The CUDA kernel schedules, run on the fused module under the target."""
    from tvm.s_tir import dlight as dl

    from . import tensor_cores

    return [
        # dlight's Matmul rule would take batch_decode's [batch_size, K] x [N, K] matmuls and tile
        # the batch dim by 32+, leaving most SMs idle at small batches: batched GEMV instead.
        _schedule_batch_decode_gemvs(dl.gpu.LowBatchGEMV(4)),
        # Matmul puts float16 matmuls whose static dims all exceed 64 on tensor cores (WMMA
        # 16x16x16, models/tensor_cores.py): batch_prefill's [seq_len, K] x [N, K]; decode's M = 1 is a GEMV.
        *tensor_cores.passes(),
        dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
        ),
    ]


def _schedule_batch_decode_gemvs(rule) -> tvm.transform.Pass:
    """Apply `rule` to the kernels batch_decode calls (its matmuls have the symbolic batch size),
    before the default rules see them."""

    @tvm.transform.module_pass(opt_level=0, name="tvmlm_batch_decode_gemvs")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        target = tvm.target.Target.current()
        for gv in _called_prim_funcs(mod, "batch_decode"):
            sch = rule.apply(mod[gv], target, False)
            if sch is not None:
                mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        return mod

    return _pass


def _called_prim_funcs(mod: tvm.ir.IRModule, name: str) -> list:
    """GlobalVars of the PrimFuncs that relax function `name` calls through call_tir."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    found = []
    for block in mod[name].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op.same_as(call_tir) and value.args[0] not in found:
                found.append(value.args[0])
    return found
