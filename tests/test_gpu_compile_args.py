"""What the product path compiles for a CUDA device, checked without a GPU or a compile: the
dtype (float16, bfloat16 for bf16 models), the architecture of the index asked for in the target,
and that architecture in the compile-cache key."""

from __future__ import annotations

import json
import shutil

import pytest

from tvmlm import compile as tc
from tvmlm import devices
from tvmlm.compile import CompileOptions, device_compile_args, device_dtype, lib_key, target_key
from tvmlm.devices import Device

#: A fake machine: cuda:0 is an A100 (8.0), cuda:1 an H100 (9.0).
CAPABILITIES = {0: "8.0", 1: "9.0"}


def capability(index: int) -> str:
    return CAPABILITIES[index]


def test_device_dtype():
    assert device_dtype("cpu", {"torch_dtype": "bfloat16"}) == "float32"
    assert device_dtype("cuda", {}) == "float16"  # GGUF configs carry no torch_dtype
    assert device_dtype("cuda", {"torch_dtype": "float32"}) == "float16"
    assert device_dtype("cuda", {"torch_dtype": "float16"}) == "float16"
    assert device_dtype("cuda", {"torch_dtype": "bfloat16"}) == "bfloat16"
    assert device_dtype("cuda", {"dtype": "torch.bfloat16"}) == "bfloat16"
    assert device_dtype("cuda", {"torch_dtype": "bfloat16"}, quantization="none") == "bfloat16"
    # group-quantized weights are multiplied by float32 activations
    assert device_dtype("cuda", {}, quantization="q4_1") == "float32"


def test_the_target_names_the_architecture_of_the_index_asked_for():
    assert device_compile_args(Device("cpu")) == ("cpu", None)
    assert device_compile_args(Device("cuda", 0), capability) == ("cuda", {"kind": "cuda", "arch": "sm_80"})
    assert device_compile_args(Device("cuda", 1), capability) == ("cuda", {"kind": "cuda", "arch": "sm_90"})


def test_cache_key_differs_per_architecture(tiny_model_dir):
    config = json.loads((tiny_model_dir("llama") / "config.json").read_text())
    options = CompileOptions(dtype="float16")
    keys = {index: lib_key(config, target_key("cuda", target=device_compile_args(Device("cuda", index), capability)[1]), options)
            for index in CAPABILITIES}  # fmt: skip
    assert keys[0] != keys[1]
    # the key is the architecture's, not the index's: two GPUs of one kind share a library
    same = lib_key(config, target_key("cuda", target=device_compile_args(Device("cuda", 1), lambda i: "8.0")[1]), options)
    assert same == keys[0]
    assert lib_key(config, target_key("cuda", target={"kind": "cuda", "arch": "sm_90"}), CompileOptions(dtype="bfloat16")) != keys[1]


def test_resolve_package_compiles_for_the_chosen_cuda_device(tiny_model_dir, monkeypatch):
    calls = []

    def fake_prepare(path, kind, device_detail="", options=None, *, target=None, **_):
        calls.append((kind, options, target))
        return tc.Package(path, {}, compiled=True)

    monkeypatch.setattr(tc, "prepare_package", fake_prepare)
    monkeypatch.setattr(devices, "_cuda_compute_capability", capability)
    tc.resolve_package(tiny_model_dir("llama"), Device("cuda", 1), kv_dtype="float16")
    tc.resolve_package(tiny_model_dir("llama"), "cpu")
    (kind, options, target), (cpu_kind, cpu_options, cpu_target) = calls
    assert (kind, target) == ("cuda", {"kind": "cuda", "arch": "sm_90"})
    assert options.dtype is None and options.kv_dtype == "float16"  # None: device_dtype, once the config is read
    assert (cpu_kind, cpu_target) == ("cpu", None)


@pytest.mark.parametrize("torch_dtype, expected", [("float32", "float16"), ("bfloat16", "bfloat16")])
def test_prepare_package_resolves_the_device_dtype(tiny_model_dir, tmp_path, monkeypatch, torch_dtype, expected):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "torch_dtype": torch_dtype}))
    monkeypatch.setenv("TVMLM_CACHE_DIR", str(tmp_path / "cache"))
    built = []

    class Stop(Exception):
        pass

    def fake_build(hf_config, lib_dir, key, device_kind, target, options, progress):
        built.append((device_kind, target, options))
        raise Stop

    monkeypatch.setattr(tc, "_build_library", fake_build)
    with pytest.raises(Stop):
        tc.prepare_package(model, "cuda", options=CompileOptions(dtype=None), target={"kind": "cuda", "arch": "sm_90"}, progress=False)
    [(kind, target, options)] = built
    assert (kind, target["arch"], options.dtype) == ("cuda", "sm_90", expected)
    assert options.weight_formats == ()  # dense half weights: nothing is packed or kept as f32
