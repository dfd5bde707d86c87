"""Build gpu_bundle/ (run here, on the CPU machine with apache-tvm): everything the GPU check needs
that the device machine cannot make itself (see README.md next to this file).

    gpu_bundle/tvm_runtime/   libtvm_runtime.so, libtvm_runtime_cuda.so (from the tvm wheel)
    gpu_bundle/tvm_ffi/       include/ + lib/libtvm_ffi.so (from the tvm_ffi wheel)
    gpu_bundle/pybind11/      include/ + share/cmake/pybind11 (from the pybind11 package)
    gpu_bundle/models/<name>/ lib.so + metadata.json + config.json (no params: check.py makes them)

    python tools/gpu_check/make_bundle.py [--out gpu_bundle] [--llvm DIR] [--only NAME ...]

--llvm DIR also compiles the same models for the local CPU into DIR (for `check.py --device cpu`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

CUDA_TARGET = {
    "kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
    "thread_warp_size": 32, "host": {"kind": "llvm"},
}  # fmt: skip
MAX_BUNDLE_BYTES = 60 << 20


def tiny_llama_config() -> dict:
    """config.json of tvmlm.testing.make_hf_model('llama') (the tiny test llama)."""
    from tvmlm.testing import make_hf_model

    with tempfile.TemporaryDirectory() as tmp:
        return json.loads((make_hf_model("llama", tmp) / "config.json").read_text())


def smollm2_shape_config() -> dict:
    """A Llama with SmolLM2-135M's shapes (random weights are made on the device)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    cfg.rope_theta = 100000.0
    if isinstance(getattr(cfg, "rope_parameters", None), dict):
        cfg.rope_parameters["rope_theta"] = 100000.0
    d = cfg.to_dict()
    d["architectures"] = ["LlamaForCausalLM"]
    d["torch_dtype"] = d["dtype"] = "float16"
    return d


def llama_1b_shape_config() -> dict:
    """A Llama with Llama-3.2-1B's shapes (2.5 GB of float16 weights): big enough that batch-1
    decode time is weight reads, not kernel launches, so it measures the HBM bandwidth fraction.
    Random weights are written straight into the package on the device (no HF checkpoint)."""
    d = smollm2_shape_config()
    d.update(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0)  # fmt: skip
    if isinstance(d.get("rope_parameters"), dict):
        d["rope_parameters"]["rope_theta"] = 500000.0
    return d


def llama_8b_shape_config() -> dict:
    """A Llama with Llama-3.1-8B's shapes (16 GB of float16 weights, untied lm_head)."""
    d = llama_1b_shape_config()
    d.update(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, head_dim=128,
             tie_word_embeddings=False)  # fmt: skip
    return d


MODELS = {  # name -> (config maker, dtype)
    "tiny-llama-f32": (tiny_llama_config, "float32"),
    "smollm2-shape-f16": (smollm2_shape_config, "float16"),
    "llama-1b-shape-f16": (llama_1b_shape_config, "float16"),
    "llama-8b-shape-f16": (llama_8b_shape_config, "float16"),
}
DEFAULT_MODELS = ["tiny-llama-f32", "smollm2-shape-f16", "llama-1b-shape-f16"]  # the 8B is opt-in (--only)


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"python package {name!r} not found (run inside the tvmlm venv)")
    return Path(spec.submodule_search_locations[0])


def copy_runtime(out: Path) -> None:
    tvm_lib, ffi, pb = package_dir("tvm") / "lib", package_dir("tvm_ffi"), package_dir("pybind11")
    (out / "tvm_runtime").mkdir(parents=True)
    for lib in ("libtvm_runtime.so", "libtvm_runtime_cuda.so"):
        shutil.copy2(tvm_lib / lib, out / "tvm_runtime" / lib)
    # tvm_ffi: headers (tvm/ffi + dlpack) and the library; its share/cmake config calls the tvm_ffi
    # Python package, so CMakeLists.txt declares the target itself and the config is not carried.
    shutil.copytree(ffi / "include", out / "tvm_ffi" / "include", ignore=shutil.ignore_patterns("tvm_ffi_python_*"))
    (out / "tvm_ffi" / "lib").mkdir(parents=True)
    shutil.copy2(ffi / "lib" / "libtvm_ffi.so", out / "tvm_ffi" / "lib" / "libtvm_ffi.so")
    shutil.copytree(pb / "include", out / "pybind11" / "include")
    shutil.copytree(pb / "share" / "cmake", out / "pybind11" / "share" / "cmake")


def compile_model(name: str, device_kind: str, target: dict | None, out: Path) -> float:
    from tvmlm.compile import CompileOptions
    from tvmlm.models.build import build_module
    from tvmlm.models.cuda_codegen import check_cuda_binary

    make_config, dtype = MODELS[name]
    config = make_config()
    t0 = time.time()
    built = build_module(config, device_kind, target, CompileOptions(dtype=dtype))
    out.mkdir(parents=True, exist_ok=True)
    ex = built.compile()  # CUDA: kernels compiled by nvcc for the target's arch (models/cuda_codegen.py)
    ex.export_library(str(out / "lib.so"))
    if device_kind == "cuda":
        check_cuda_binary(out / "lib.so")
    (out / "metadata.json").write_text(json.dumps(built.metadata, indent=1))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return time.time() - t0


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "gpu_bundle")
    ap.add_argument("--llvm", type=Path, default=None, help="also compile CPU variants into this dir")
    ap.add_argument("--only", nargs="*", default=DEFAULT_MODELS, choices=list(MODELS))
    ap.add_argument("--no-cuda", action="store_true", help="skip the CUDA bundle (only --llvm)")
    args = ap.parse_args()

    if not args.no_cuda:
        for sub in ("tvm_runtime", "tvm_ffi", "pybind11", *(f"models/{n}" for n in args.only)):
            shutil.rmtree(args.out / sub, ignore_errors=True)
        copy_runtime(args.out)
        for name in args.only:
            secs = compile_model(name, "cuda", CUDA_TARGET, args.out / "models" / name)
            print(f"cuda  {name}: {secs:.1f} s, lib.so {du(args.out / 'models' / name) / 1e6:.2f} MB")
        total = du(args.out)
        for sub in sorted(args.out.iterdir()):
            print(f"  {sub.name:12s} {du(sub) / 2**20:7.2f} MiB")
        print(f"{args.out}: {total / 2**20:.2f} MiB")
        if total > MAX_BUNDLE_BYTES:
            raise SystemExit(f"bundle is {total / 2**20:.1f} MiB, over the {MAX_BUNDLE_BYTES >> 20} MiB limit")
    if args.llvm:
        for name in args.only:
            secs = compile_model(name, "cpu", None, args.llvm / name)
            print(f"llvm  {name}: {secs:.1f} s")


if __name__ == "__main__":
    main()
