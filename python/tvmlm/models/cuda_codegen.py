"""Make TVM compile CUDA kernels to a binary at build time, and check that a library holds one.

TVM 0.27 builds a real CUDA module only when the runtime's factory "ffi.Module.create.cuda" is
registered, i.e. libtvm_runtime_cuda.so is loaded; otherwise the library keeps the CUDA source
(fmt "cuda") and needs the Python callback tvm_callback_cuda_compile when it is loaded, which
`_core` (no tvm package) does not have. `enable_cuda_codegen` loads the plugin (with a stub
libcuda.so.1 on a machine without the driver: its functions are never called at build time) and
selects nvcc, since the default NVRTC path needs the cuda-bindings package.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import importlib.util
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

#: CUDA module formats as TVM serializes them (length-prefixed names) in an exported library.
_FORMATS = (b"fatbin", b"cubin", b"ptx", b"cuda")


def _package_lib_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"python package {name!r} not found")
    return Path(spec.submodule_search_locations[0]) / "lib"


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def _load_driver_stub(plugin: Path) -> None:
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(plugin)], capture_output=True, text=True,
                               check=True).stdout.split()  # fmt: skip
    driver_syms = sorted({w for w in undefined if w.startswith("cu") and not w.startswith("cuda")})
    stub_dir = Path(tempfile.mkdtemp(prefix="tvmlm-cuda-stub-"))
    atexit.register(shutil.rmtree, stub_dir, True)
    (stub_dir / "cuda_stub.c").write_text("".join(f"int {name}(void) {{ return 100; }}\n" for name in driver_syms))
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(stub_dir / "libcuda.so.1"), str(stub_dir / "cuda_stub.c"),
                    "-Wl,-soname,libcuda.so.1"], check=True)  # fmt: skip
    ctypes.CDLL(str(stub_dir / "libcuda.so.1"), mode=ctypes.RTLD_GLOBAL)


def enable_cuda_codegen() -> None:
    """Register what TVM needs to compile CUDA kernels (nvcc -> fatbin) while building a library."""
    import tvm
    import tvm.support.nvcc  # noqa: F401  (registers tvm_callback_cuda_compile)

    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")  # the default NVRTC path needs cuda-bindings
    if tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    plugin = _package_lib_dir("tvm") / "libtvm_runtime_cuda.so"
    if not _driver_present():
        _load_driver_stub(plugin)
    cudart = sorted(glob.glob("/usr/local/cuda*/lib*/libcudart.so.13") + glob.glob("/usr/local/cuda*/targets/*/lib/libcudart.so.13"))
    if not cudart:
        raise RuntimeError("libcudart.so.13 not found under /usr/local/cuda*: cannot load TVM's CUDA runtime to compile kernels")
    ctypes.CDLL(cudart[0], mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(plugin), mode=ctypes.RTLD_GLOBAL)
    if tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None:
        raise RuntimeError(f"loaded {plugin} but ffi.Module.create.cuda is still not registered")


def cuda_binary_formats(lib: Path) -> list[str]:
    """The CUDA module formats serialized in an exported library (e.g. ["fatbin"])."""
    data = Path(lib).read_bytes()
    return [f.decode() for f in _FORMATS if struct.pack("<Q", len(f)) + f in data]


def check_cuda_binary(lib: Path) -> None:
    """The embedded CUDA module must hold a compiled binary, not source (fmt 'cuda')."""
    fmts = cuda_binary_formats(lib)
    if "fatbin" not in fmts and "cubin" not in fmts:
        raise RuntimeError(f"{lib}: CUDA module is not compiled to a binary (formats seen: {fmts})")
