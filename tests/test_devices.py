"""Device parsing, "auto" resolution, memory and TVM targets, with faked device queries."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from tvmlm import devices
from tvmlm.devices import (Device, available_memory, list_devices, parse_device, resolve_device,
                           tvm_target)
from tvmlm.errors import ConfigError, DeviceError


def exists(*present: str):
    """A fake `exists_fn` for the devices named like "cuda:0"; it records every query."""
    calls = []

    def fn(kind: str, index: int) -> bool:
        calls.append(f"{kind}:{index}")
        return f"{kind}:{index}" in present

    fn.calls = calls
    return fn


@pytest.mark.parametrize("text, kind, index", [
    ("auto", "auto", 0), ("cpu", "cpu", 0), ("CPU", "cpu", 0), ("cpu:0", "cpu", 0),
    ("cuda", "cuda", 0), ("cuda:1", "cuda", 1), (" CUDA:2 ", "cuda", 2),
])
def test_parse_device(text, kind, index):
    assert parse_device(text) == Device(kind, index)


@pytest.mark.parametrize("text", ["tpu", "cuda:x", "cuda:-1", "", "cuda:0:1", "auto:0", "nvidia",
                                  "cpu:1", 3, None])
def test_parse_device_errors_list_the_forms(text):
    with pytest.raises(ConfigError) as info:
        parse_device(text)
    msg = str(info.value)
    assert f"device={text!r}" in msg
    if text != "cpu:1":
        assert all(form in msg for form in ("auto", "cpu", "cuda[:i]"))
        assert "metal" not in msg and "vulkan" not in msg


@pytest.mark.parametrize("text", ["metal", "Metal:0", "vulkan:2", "rocm", "opencl:1", "webgpu"])
def test_gpu_runtimes_tvmlm_cannot_compile_for_are_refused(text):
    # the TVM wheel has no Vulkan code generator and no Metal/Vulkan runtime (see
    # test_tvm_cannot_build_for_metal_or_vulkan); a device tvmlm cannot compile for is refused up front
    with pytest.raises(DeviceError) as info:
        parse_device(text)
    msg = str(info.value)
    assert f"device={text!r} is not supported" in msg and "cpu and cuda only" in msg
    assert "auto, cpu, cuda[:i]" in msg
    with pytest.raises(DeviceError):
        resolve_device(text, exists("cuda:0", f"{text.strip().lower().split(':')[0]}:0"))


def test_gpu_is_ambiguous():
    with pytest.raises(ConfigError) as info:
        parse_device("gpu")
    assert all(k in str(info.value) for k in ("'cuda'", "'auto'"))
    assert "metal" not in str(info.value)


def test_device_str():
    assert [str(Device("cpu")), str(Device("cuda", 1)), str(Device("auto"))] == [
        "cpu", "cuda:1", "auto"]
    assert parse_device(str(Device("cuda", 3))) == Device("cuda", 3)


@pytest.mark.parametrize("present, chosen", [
    ((), Device("cpu")),
    (("vulkan:0",), Device("cpu")),  # present, but tvmlm cannot compile for it
    (("metal:0", "vulkan:0"), Device("cpu")),
    (("cuda:0", "vulkan:0"), Device("cuda", 0)),
    (("cuda:1",), Device("cpu")),  # auto only probes index 0
])
def test_auto_picks_the_first_accelerator(present, chosen, caplog):
    with caplog.at_level(logging.INFO, logger="tvmlm.devices"):
        assert resolve_device("auto", exists(*present)) == chosen
    assert f"resolved to {chosen}" in caplog.text


def test_auto_probe_order():
    fn = exists()
    resolve_device("auto", fn)
    assert fn.calls == ["cuda:0"]  # only kinds tvmlm compiles for


def test_explicit_device():
    assert resolve_device("cuda:1", exists("cuda:0", "cuda:1")) == Device("cuda", 1)
    fn = exists()
    assert resolve_device("cpu", fn) == Device("cpu") and fn.calls == []  # cpu is never probed


def test_missing_device_names_what_was_found():
    with pytest.raises(DeviceError) as info:
        resolve_device("cuda:1", exists("cuda:0"))
    assert str(info.value) == "cuda:1 is not available; found: cpu, cuda:0"
    with pytest.raises(DeviceError, match="^cuda:2 is not available; found: cpu, cuda:0, cuda:1$"):
        resolve_device("cuda:2", exists("cuda:0", "cuda:1", "vulkan:0"))


def test_list_devices():
    assert list_devices(exists("cuda:0", "cuda:1", "metal:0")) == [
        Device("cpu"), Device("cuda", 0), Device("cuda", 1)]


def test_available_memory(monkeypatch):
    Mem = namedtuple("Mem", "total available")
    monkeypatch.setattr(devices.psutil, "virtual_memory", lambda: Mem(64 << 30, 40 << 30))
    calls = []

    def memory_fn(kind, index):
        calls.append((kind, index))
        return 80 << 30

    assert available_memory(Device("cpu"), memory_fn) == 40 << 30 and calls == []
    assert available_memory(Device("cuda", 1), memory_fn) == 80 << 30
    assert calls == [("cuda", 1)]
    with pytest.raises(ConfigError, match="resolve_device"):
        available_memory(Device("auto"), memory_fn)


def test_available_memory_on_this_host_is_plausible():
    assert 0 < available_memory(Device("cpu")) <= devices.psutil.virtual_memory().total


def test_host_cpu_count():
    n = devices.host_cpu_count()
    assert 1 <= n <= (devices.os.cpu_count() or 1)


def test_tvm_targets_with_fakes():
    assert tvm_target(Device("cpu"), host_cpu_fn=lambda: "znver4", num_cores=2) == {
        "kind": "llvm", "mcpu": "znver4", "num-cores": 2}
    seen = []

    def cc(index):
        seen.append(index)
        return "9.0"

    assert tvm_target(Device("cuda", 1), compute_capability_fn=cc) == {"kind": "cuda",
                                                                      "arch": "sm_90"}
    assert seen == [1]
    assert tvm_target("cuda", compute_capability_fn=lambda i: (8, 6))["arch"] == "sm_86"
    assert tvm_target("cuda", compute_capability_fn=lambda i: "12.0")["arch"] == "sm_120"
    with pytest.raises(ConfigError, match="resolve_device"):
        tvm_target("auto")


def test_tvm_accepts_the_targets():
    tvm = pytest.importorskip("tvm")
    from tvm.target import codegen

    cpu = tvm_target(Device("cpu"))  # real defaults: LLVM's host cpu name, host core count
    assert cpu["mcpu"] == codegen.llvm_get_system_cpu() and cpu["num-cores"] >= 1
    for target in (cpu, tvm_target("cuda", compute_capability_fn=lambda i: "9.0")):
        assert tvm.target.Target(target).kind.name == target["kind"]
    assert str(tvm.target.Target(cpu).attrs["mcpu"]) == cpu["mcpu"]


def test_tvm_cannot_build_for_metal_or_vulkan():
    # Why metal and vulkan are refused: the wheel cannot build a Vulkan library and has neither
    # runtime, so a library built for them could not be loaded (if this starts failing, the wheel
    # grew support and tvmlm may add the kinds).
    tvm = pytest.importorskip("tvm")
    assert tvm.get_global_func("target.build.vulkan", True) is None
    info = tvm.support.libinfo()
    assert info.get("USE_METAL", "OFF") == "OFF" and info.get("USE_VULKAN", "OFF") == "OFF"
    assert tvm.get_global_func("target.build.cuda", True) is not None


def test_modules_do_not_import_tvm_or_the_core():
    code = (
        "import sys; import tvmlm.errors, tvmlm.devices, tvmlm.config, tvmlm.protocol, "
        "tvmlm.detokenizer; bad = [m for m in ('tvm', 'tvmlm._core', 'torch') if m in sys.modules];"
        " assert not bad, bad"
    )
    python_dir = Path(__file__).resolve().parents[1] / "python"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(python_dir)})
