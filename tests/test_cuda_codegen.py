"""The CUDA library built on this CPU machine (no GPU, no driver; nvcc and the CUDA runtime
library from the toolkit): the tiny model compiled through `BuiltModule.compile` for sm_80 in
float16 and for sm_90 in bfloat16 holds compiled kernels (not CUDA source) for exactly that
architecture. Runs in a subprocess: codegen loads TVM's CUDA runtime (and a stub libcuda.so.1)
into the process."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("tvm")
if shutil.which("nvcc") is None or not glob.glob("/usr/local/cuda*/**/libcudart.so.13", recursive=True):
    pytest.skip("needs nvcc and libcudart.so.13 (the CUDA toolkit) to compile kernels", allow_module_level=True)

SCRIPT = r"""
import json, struct, sys
from pathlib import Path
from tvmlm.compile import CompileOptions
from tvmlm.models.build import build_module
from tvmlm.models.cuda_codegen import cuda_binary_formats

config, out, dtype, arch = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
ex = build_module(config, "cuda", {"kind": "cuda", "arch": arch}, CompileOptions(dtype=dtype)).compile()
ex.export_library(str(out))
sources = []
def walk(m):
    if m.kind == "cuda":
        sources.append(m.inspect_source(""))
    for c in m.imports:
        walk(c)
walk(ex.mod)
data = out.read_bytes()
cubin = data.find(b"\x7fELF", 1)  # the first ELF after the library's own header
print(json.dumps({
    "formats": cuda_binary_formats(out),
    "e_machine": struct.unpack_from("<H", data, cubin + 18)[0] if cubin > 0 else None,
    "sm": (struct.unpack_from("<I", data, cubin + 48)[0] >> 8) & 0xFF if cubin > 0 else None,
    "source": sources[0] if sources else "",
}))
"""


@pytest.mark.parametrize("dtype, arch, c_type", [("float16", "sm_80", "half"), ("bfloat16", "sm_90", "nv_bfloat16")])
def test_cuda_library_is_compiled_for_the_architecture(tiny_model_dir, tmp_path, dtype, arch, c_type):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir("llama") / "config.json"),
                          str(tmp_path / "lib.so"), dtype, arch],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "cubin" in result["formats"] or "fatbin" in result["formats"], result["formats"]
    assert result["e_machine"] == 190  # EM_CUDA: a compiled cubin is embedded
    assert result["sm"] == int(arch[3:])  # e_flags' SM field: built for the arch asked for
    kernels = [line for line in result["source"].splitlines() if "__global__" in line]
    assert kernels and any(c_type in line for line in kernels)  # kernels take 16-bit tensors
