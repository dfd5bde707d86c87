"""Tensor cores on the CPU machine (no GPU): float16 prefill matmuls get dlight's WMMA schedule
(models/tensor_cores.py) while decode keeps GEMVs, and such a kernel compiled by nvcc for sm_80
holds wmma.mma.sync instructions. Their numerics need a GPU: tools/gpu_check compares Engine's
float16 greedy tokens with transformers on a model whose prefill matmuls take this path."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys

import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from tvmlm.compile import CompileOptions  # noqa: E402
from tvmlm.models import tensor_cores  # noqa: E402
from tvmlm.models.build import build_module  # noqa: E402
from tvmlm.models.pipeline import _called_prim_funcs, cuda_schedule_passes  # noqa: E402

if not tensor_cores.tensorize_available():
    pytest.skip("the installed tvm_ffi cannot run s_tir tensorize (see models/tensor_cores.py)", allow_module_level=True)

# Every matmul dim above 64 (dlight's tensorization threshold); one layer keeps the build short.
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": 128,
          "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 32, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
TARGET = {"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
          "thread_warp_size": 32, "host": {"kind": "llvm"}}  # fmt: skip


def schedule(dtype: str):
    """The model's fused kernels after the CUDA schedule passes."""
    from tvm.relax.backend.cuda import pipeline as tvm_pipeline

    built = build_module(CONFIG, "cuda", TARGET, CompileOptions(dtype=dtype))
    with built.target:
        return tvm.transform.Sequential([
            relax.transform.FuseTransposeMatmul(), *tvm_pipeline.library_dispatch_passes(built.target),
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
            relax.transform.FuseOps(), relax.transform.FuseTIR(), *cuda_schedule_passes(),
        ])(built.mod)  # fmt: skip


def matmul_kernels(mod, func: str) -> dict[str, str]:
    return {gv.name_hint: mod[gv].script() for gv in _called_prim_funcs(mod, func) if "matmul" in gv.name_hint.lower()}


def test_prefill_matmuls_run_on_tensor_cores_and_decode_on_gemvs():
    mod = schedule("float16")
    kernels = matmul_kernels(mod, "batch_prefill")
    # qkv, o_proj (+ residual), gate_up, down (+ residual), and the lm_head over the logit rows
    on_tc = [name for name, script in kernels.items() if "T.tvm_mma_sync" in script]
    assert len(on_tc) >= 4, sorted(kernels)
    for name in on_tc:
        assert "wmma.matrix_a" in kernels[name] and "T.tvm_load_matrix_sync" in kernels[name], name
    for func in ("decode", "batch_decode"):
        kernels = matmul_kernels(mod, func)
        assert len(kernels) >= 4
        assert not [name for name, script in kernels.items() if "tvm_mma_sync" in script], func


@pytest.mark.slow
def test_bfloat16_matmuls_stay_on_simt():
    # dlight tensorizes float16 only; bfloat16 models (sm_90 default) keep the SIMT schedule.
    mod = schedule("bfloat16")
    kernels = matmul_kernels(mod, "batch_prefill")
    assert kernels and not [n for n, s in kernels.items() if "tvm_mma_sync" in s]


KERNEL_SCRIPT = r"""
import re, subprocess, sys, tempfile
from pathlib import Path
import tvm
from tvm.script import tirx as T
from tvm.s_tir import dlight as dl
from tvmlm.models.cuda_codegen import enable_cuda_codegen

@T.prim_func(private=True, s_tir=True)
def mm(var_A: T.handle, B: T.Buffer((T.int64(256), T.int64(128)), "float16"), var_C: T.handle):
    T.func_attr({"tirx.noalias": True})
    n = T.int64()
    A = T.match_buffer(var_A, (T.int64(1), n, T.int64(128)), "float16")
    C = T.match_buffer(var_C, (T.int64(1), n, T.int64(256)), "float16")
    for i0, i1, i2, k in T.grid(T.int64(1), n, T.int64(256), T.int64(128)):
        with T.sblock("NT_matmul"):
            v0, v1, v2, vk = T.axis.remap("SSSR", [i0, i1, i2, k])
            with T.init():
                C[v0, v1, v2] = T.float16(0)
            C[v0, v1, v2] = C[v0, v1, v2] + A[v0, v1, vk] * B[v2, vk]

target = tvm.target.Target({"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024,
                            "max_shared_memory_per_block": 49152, "thread_warp_size": 32}, host={"kind": "llvm"})
with target:
    mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul())(tvm.IRModule({"main": mm.with_attr("global_symbol", "main")}))
enable_cuda_codegen()
with target:
    lib = tvm.compile(mod, target=target)
source = lib.mod.imports[0].inspect_source("")
tmp = Path(tempfile.mkdtemp())
(tmp / "k.cu").write_text(source)
subprocess.run(["nvcc", "-ptx", "-arch=sm_80", "-o", str(tmp / "k.ptx"), str(tmp / "k.cu")], check=True)
ptx = (tmp / "k.ptx").read_text()
print("RESULT", source.count("wmma::mma_sync"), len(re.findall(r"\bwmma\.mma\.sync\b", ptx)),
      len(re.findall(r"\bwmma\.load\.[ab]\.sync\b", ptx)), lib.mod.imports[0].kind)
"""


@pytest.mark.skipif(shutil.which("nvcc") is None or not glob.glob("/usr/local/cuda*/**/libcudart.so.13", recursive=True),
                    reason="needs nvcc and libcudart.so.13 (the CUDA toolkit)")  # fmt: skip
def test_tensor_core_kernel_compiles_to_mma_instructions(tmp_path):
    # In a subprocess: codegen loads TVM's CUDA runtime (and a stub libcuda.so.1) into the process.
    # From a file: TVMScript parses the kernel from its source lines.
    (tmp_path / "kernel.py").write_text(KERNEL_SCRIPT)
    out = subprocess.run([sys.executable, str(tmp_path / "kernel.py")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    src_mma, ptx_mma, ptx_loads, kind = line.split()[1:]
    assert kind == "cuda"
    # A warp computes a 32 x 32 tile per k step: 2 x 2 fragments, 2 x 2 wmma.mma.sync
    assert int(src_mma) >= 1 and int(ptx_mma) >= 4 and int(ptx_loads) >= 4, line
