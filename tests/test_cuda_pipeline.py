"""The CUDA pipeline's IR, checked on a machine with no GPU (no codegen, no nvcc): the decode
functions are captured into CUDA graphs, and batch_decode's matmuls get batched-GEMV schedules
(dlight's Matmul rule would leave most SMs idle at small batches). tools/gpu_check measures the
speed these give on a real GPU."""

from __future__ import annotations

import json

import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from tvmlm.testing import make_hf_model  # noqa: E402
from tvmlm.compile import CompileOptions  # noqa: E402
from tvmlm.models.build import build_module  # noqa: E402
from tvmlm.models.pipeline import _called_prim_funcs, relax_pipeline  # noqa: E402

CUDA_TARGET = {"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
               "thread_warp_size": 32, "host": {"kind": "llvm"}}  # fmt: skip


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    hf_dir = make_hf_model("llama", tmp_path_factory.mktemp("hf"))
    config = json.loads((hf_dir / "config.json").read_text())
    built = build_module(config, "cuda", CUDA_TARGET, CompileOptions(dtype="float16"))
    with tvm.transform.PassContext(config=built.pass_config()):
        return built, relax_pipeline(built.target)(built.mod)


def test_library_exports_the_contract_functions_only(lowered):
    built, _ = lowered
    names = {gv.name_hint for gv, f in built.mod.functions_items() if isinstance(f, relax.Function)}
    # docs/contracts.md; a one-sequence prefill is batch_prefill, so no separate `prefill` is compiled
    assert {"embed", "decode", "batch_prefill", "batch_decode", "create_paged_kv_cache"} <= names
    assert "prefill" not in names


def test_decode_functions_replay_cuda_graphs(lowered):
    built, mod = lowered
    layers = built.metadata["num_hidden_layers"]
    for name in ("decode", "batch_decode"):
        script = mod[name].script()
        # One graph per stretch between the KV cache's attention calls (one per layer), plus the last.
        assert script.count("vm.builtin.cuda_graph.run_or_capture") == layers + 1, name
    assert mod["batch_decode"].attrs["relax.rewrite_cuda_graph.capture_symbolic_vars"][0] == "batch_size"
    # Prefill is not captured: its shapes change with every prompt.
    assert "cuda_graph" not in mod["batch_prefill"].script()


def test_batch_decode_matmuls_are_batched_gemvs(lowered):
    built, _ = lowered
    from tvm.relax.backend.cuda import pipeline as tvm_pipeline

    # The IR as the schedule passes see it: fused, unscheduled kernels.
    with built.target:
        fused = tvm.transform.Sequential([
            relax.transform.FuseTransposeMatmul(), *tvm_pipeline.library_dispatch_passes(built.target),
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
            relax.transform.FuseOps(), relax.transform.FuseTIR(),
        ])(built.mod)  # fmt: skip
    matmuls = [gv for gv in _called_prim_funcs(fused, "batch_decode") if "matmul" in gv.name_hint.lower()]
    assert len(matmuls) >= 4  # qkv, o_proj, gate_up, down (+ lm_head)
    _, mod = lowered
    for gv in matmuls:
        script = mod[gv.name_hint].script()
        # LowBatchGEMV pads the batch to its bucket and splits K across threadIdx.x; the Matmul rule
        # would tile the batch with blockIdx.y / vthread.
        assert "_pad" in script and "vthread" not in script, gv.name_hint
