"""The compile cache's keys (compile.py): what changes a compiled library besides the model
(`CompileOptions`), the target's part of the key, and cheap fingerprints of the weight files and
of the code that shapes a package. Nothing here imports tvm or reads a tensor."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from ._version import __version__

__all__ = ["CompileOptions", "code_fingerprint", "device_compile_args", "device_dtype", "digest", "host_fingerprint",
           "lib_key", "source_key", "target_key", "tvm_version",
           "weights_fingerprint"]


@dataclass(frozen=True)
class CompileOptions:
    """What changes the compiled library besides the model config and the target."""

    # Activations' (and dense weights') dtype; None: the device's, chosen once the model's config is
    # read (device_dtype).
    dtype: str | None = "float32"
    prefill_chunk_size: int | None = None  # None: the model's default
    max_batch_size: int = 128
    # Weight formats kept packed ({"linear", "embed", "lm_head"} -> f32/q4_1/q8_0, plus per-tensor
    # entries "model.layers.<i>.<linear>.weight" -> format where a GGUF file mixes block types), as a
    # sorted tuple of pairs so the options stay hashable (and part of the cache key); empty = all f32.
    weight_formats: tuple[tuple[str, str], ...] = ()
    # CPU with AVX-512 VNNI or AVX2: packed-weight matmuls quantize activations to int8 per 32-element
    # block, as llama.cpp does (~3x faster); False keeps the exact float32-dequantize kernels.
    int8_activations: bool = True
    # Group-quantize float weights ("q4_1" / "q8_0") or dequantize packed ones ("none"); None:
    # keep what the source stores. Resolved into weight_formats by prepare_package.
    quantization: str | None = None
    # KV cache dtype (float32/float16/bfloat16); None: the activations' dtype, or bfloat16 for
    # packed weights with int8 activations on a CPU with AVX-512 BF16 (models/build.py).
    kv_dtype: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "prefill_chunk_size": self.prefill_chunk_size,
            "max_batch_size": self.max_batch_size,
            "weight_formats": dict(self.weight_formats),
            "int8_activations": self.int8_activations,
            "quantization": self.quantization,
            "kv_dtype": self.kv_dtype,
        }


def tvm_version() -> str:
    """apache-tvm's version and apache-tvm-ffi's: the ffi decides whether float16 matmuls can be
    tensorized (models/tensor_cores.py), so a library built under another one is another library."""
    versions = []
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        try:
            versions.append(importlib_metadata.version(dist))
        except importlib_metadata.PackageNotFoundError:  # a source build
            versions.append("unknown")
    return "+ffi".join(versions)


def host_fingerprint() -> str:
    """Identifies the host CPU's instruction set without importing tvm (for the cache key)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].strip()
                if model and flags:
                    break
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return hashlib.sha256(f"{model}|{flags}".encode()).hexdigest()[:16]


def target_key(device_kind: str, device_detail: str = "", target: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of the cache key that stands for the compile target: an explicit target (a CUDA
    architecture, a CPU other than this host's) is its own key."""
    if target is not None:
        return {"target": target}
    if device_kind == "cpu":
        return {"kind": "llvm", "host": host_fingerprint(), "cores": os.cpu_count()}
    return {"kind": device_kind, "detail": device_detail}


def device_dtype(device_kind: str, hf_config: dict[str, Any], quantization: str | None = None) -> str:
    """The dtype a device computes in: float32 on cpu; on cuda float16, or bfloat16 for a model
    whose `torch_dtype` is bfloat16 (float16's range overflows on some bf16-trained models), and
    float32 when weights are group-quantized (the packed kernels take float32 activations)."""
    if device_kind != "cuda" or quantization not in (None, "none"):
        return "float32"
    stored = hf_config.get("torch_dtype") or hf_config.get("dtype") or ""  # "dtype" in newer transformers
    return "bfloat16" if str(stored).replace("torch.", "") == "bfloat16" else "float16"


def device_compile_args(device: Any, compute_capability_fn: Any = None) -> tuple[str, dict[str, Any] | None]:
    """(device kind, explicit target or None) for prepare_package on a resolved `Device`: a CUDA
    device's target names the architecture of the index asked for, so it is in the cache key."""
    from .devices import tvm_target

    if device.kind != "cuda":
        return device.kind, None
    return "cuda", tvm_target(device, compute_capability_fn=compute_capability_fn)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def weights_fingerprint(files: list[str]) -> str:
    """Cheap identity of the weight files: names, sizes and a hash of their first and last MiB."""
    h = hashlib.sha256()
    for path in sorted(files):
        p = Path(path)
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
    return h.hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the sources that shape a package (model definitions, kernels, weight conversion):
    a tvmlm whose kernels changed without a version bump (a development checkout, a patched
    install) never reuses a library or weights built by the old code. Reads ~40 small files."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for sub in ("models", "weights"):
        for path in sorted((root / sub).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def source_key(files: list[str], target: dict[str, Any], options: CompileOptions) -> str:
    """The warm path's key (compile.py's source index): the weight files, target, options, versions
    and code, so a hit never hands out a package that changed code would build differently."""
    return digest({"files": weights_fingerprint(files), "target": target, "options": options.as_dict(),
                   "tvmlm": __version__, "tvm": tvm_version(), "code": code_fingerprint()})


def lib_key(hf_config: dict[str, Any], target: dict[str, Any], options: CompileOptions) -> str:
    """Keyed on the numbers that shape the graph (`LlamaConfig`), not the config file: an HF
    directory and a GGUF of one model share a library. Raises ValueError for a config that no
    model definition implements, so it is refused before anything is compiled."""
    from dataclasses import asdict

    from .models.llama_config import LlamaConfig

    return digest(
        {
            "config": asdict(LlamaConfig.from_hf(hf_config)),
            "target": target,
            "options": options.as_dict(),
            "tvmlm": __version__,
            "code": code_fingerprint(),
            "tvm": tvm_version(),
        }
    )
