"""Device strings, device discovery, memory and the TVM compile target for a device.

Nothing here imports `tvm` or `tvmlm._core` at import time: device queries come in as injected
functions (production defaults import `tvmlm._core` lazily), so the module is cheap to import and
tests can fake any machine. Only `tvm_target`'s default helpers import `tvm`, because only
compiling needs it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Union

import psutil

from .errors import ConfigError, DeviceError

logger = logging.getLogger(__name__)

#: Device kinds tvmlm compiles for and runs on. "auto" is a request, not a kind a resolved Device has.
KINDS = ("cpu", "cuda")
#: Order in which "auto" probes accelerators (index 0 of each) before falling back to cpu.
AUTO_ORDER = ("cuda",)
#: The accepted device string forms, quoted in every parse error.
ALLOWED_FORMS = ("auto", "cpu", "cuda[:i]")
#: GPU runtimes TVM knows but tvmlm does not compile for: the TVM wheel has no Vulkan (SPIR-V)
#: code generator and no Metal or Vulkan runtime, and tvmlm's kernels are scheduled for CPU and
#: CUDA only. Asking for one is refused with a DeviceError rather than failing at compile time.
UNSUPPORTED_KINDS = ("metal", "vulkan", "rocm", "opencl", "webgpu")

# Highest index probed when listing the devices of one kind for an error message.
_MAX_PROBE_INDEX = 16

ExistsFn = Callable[[str, int], bool]
MemoryFn = Callable[[str, int], int]


@dataclass(frozen=True)
class Device:
    """A device: `kind` in KINDS (or "auto" before resolution) and its `index`."""

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return self.kind if self.kind in ("cpu", "auto") else f"{self.kind}:{self.index}"


_DEVICE_RE = re.compile(r"^([a-z]+)(?::(\d+))?$")


def parse_device(s: Union[str, Device]) -> Device:
    """Parse "auto", "cpu" or "cuda[:i]" (case-insensitive).

    "cpu:0" is accepted as the contract's spelling of the cpu. Metal, Vulkan and the other GPU
    runtimes in UNSUPPORTED_KINDS raise DeviceError (tvmlm cannot compile for them); anything else
    raises ConfigError listing the allowed forms; "gpu" is refused because it does not say which
    runtime.
    """
    if isinstance(s, Device):
        return s
    if not isinstance(s, str):
        raise ConfigError.bad_value("device", s, "a string, one of " + ", ".join(ALLOWED_FORMS))
    text = s.strip().lower()
    m = _DEVICE_RE.match(text)
    if m is None:
        raise ConfigError.bad_value("device", s, "one of " + ", ".join(ALLOWED_FORMS))
    kind, index_text = m.group(1), m.group(2)
    if kind == "gpu":
        # Ambiguous on machines with several runtimes; make the user pick rather than guess.
        raise ConfigError(
            f"device={s!r} is ambiguous: use 'cuda' (with an optional ':i'), "
            "or 'auto' to take the first accelerator found"
        )
    if kind in UNSUPPORTED_KINDS:
        raise DeviceError(
            f"device={s!r} is not supported: tvmlm compiles models for cpu and cuda only; "
            "use one of " + ", ".join(ALLOWED_FORMS)
        )
    if kind == "auto" and index_text is None:
        return Device("auto", 0)
    if kind not in KINDS:
        raise ConfigError.bad_value("device", s, "one of " + ", ".join(ALLOWED_FORMS))
    index = int(index_text) if index_text is not None else 0
    if kind == "cpu" and index != 0:
        raise ConfigError.bad_value("device", s, "'cpu' (the host is a single device)")
    return Device(kind, index)


def _core_device_exists(kind: str, index: int) -> bool:
    from . import _core  # lazily: the C++ extension is only needed when a real device is probed

    return bool(_core.device_exists(kind, index))


def _core_device_memory(kind: str, index: int) -> int:
    from . import _core

    return int(_core.device_memory(kind, index))


def _exists(exists_fn: ExistsFn, device: Device) -> bool:
    # The host cpu always exists; never ask the runtime about it.
    return device.kind == "cpu" or bool(exists_fn(device.kind, device.index))


def list_devices(exists_fn: ExistsFn | None = None) -> list[Device]:
    """All devices the runtime sees: cpu first, then each accelerator kind's indices in order."""
    exists_fn = exists_fn or _core_device_exists
    found = [Device("cpu", 0)]
    for kind in AUTO_ORDER:
        for index in range(_MAX_PROBE_INDEX):
            if not exists_fn(kind, index):
                break  # indices are dense: the first missing one ends the kind
            found.append(Device(kind, index))
    return found


def resolve_device(s: Union[str, Device], exists_fn: ExistsFn | None = None) -> Device:
    """Turn a device string into an existing Device.

    "auto" picks cuda:0 if it exists, else cpu (only devices tvmlm compiles for), and logs the choice
    at INFO. An explicit device that does not exist raises DeviceError naming what was found.
    `exists_fn(kind, index)` defaults to `tvmlm._core.device_exists` (imported on first use).
    """
    device = parse_device(s)
    exists_fn = exists_fn or _core_device_exists
    if device.kind == "auto":
        for kind in AUTO_ORDER:
            candidate = Device(kind, 0)
            if _exists(exists_fn, candidate):
                logger.info("tvmlm: device 'auto' resolved to %s", candidate)
                return candidate
        logger.info("tvmlm: device 'auto' resolved to cpu (no cuda device found)")
        return Device("cpu", 0)
    if not _exists(exists_fn, device):
        found = ", ".join(str(d) for d in list_devices(exists_fn))
        raise DeviceError(f"{device} is not available; found: {found}")
    return device


def available_memory(device: Device, memory_fn: MemoryFn | None = None) -> int:
    """Bytes the engine may plan against on `device`.

    cpu: `psutil.virtual_memory().available` (free RAM plus reclaimable cache right now).
    Accelerators: `memory_fn(kind, index)`, by default `tvmlm._core.device_memory`, which reports
    the device's *total* memory; the config's utilization fraction is applied on top of it (as in
    MLC), so lower `gpu_memory_utilization` when other processes share the GPU.
    """
    if device.kind == "auto":
        raise ConfigError("available_memory needs a resolved device; call resolve_device first")
    if device.kind == "cpu":
        return int(psutil.virtual_memory().available)
    memory_fn = memory_fn or _core_device_memory
    return int(memory_fn(device.kind, device.index))


def host_cpu_count() -> int:
    """Cores worth one compute thread each: physical cores, capped by the CPUs we may run on.

    Physical rather than logical because SMT siblings share the FMA units that GEMV/GEMM kernels
    saturate; capped by the affinity mask because containers often pin a process to fewer CPUs
    than the machine has.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    physical = psutil.cpu_count(logical=False)
    return max(1, min(usable or 1, physical or usable or 1))


def _llvm_host_cpu() -> str:
    import tvm.target.codegen  # lazily: importing tvm costs seconds and is only needed to compile

    return str(tvm.target.codegen.llvm_get_system_cpu())


def _cuda_compute_capability(index: int) -> str:
    import tvm

    return str(tvm.cuda(index).compute_version)  # e.g. "9.0"


def _sm_arch(capability: Union[str, tuple[int, int]]) -> str:
    if isinstance(capability, tuple):
        major, minor = capability
    else:
        major_text, _, minor_text = str(capability).partition(".")
        major, minor = int(major_text), int(minor_text or 0)
    return f"sm_{major}{minor}"


def tvm_target(
    device: Device,
    host_cpu_fn: Callable[[], str] | None = None,
    compute_capability_fn: Callable[[int], Union[str, tuple[int, int]]] | None = None,
    num_cores: int | None = None,
) -> dict:
    """The TVM target for `device` in the JSON-dict form `tvm.target.Target(dict)` takes.

    cpu:    {"kind": "llvm", "mcpu": <LLVM's host cpu name, e.g. "znver4">, "num-cores": n}
    cuda:   {"kind": "cuda", "arch": "sm_XY"} from the device's compute capability "X.Y"

    `host_cpu_fn()` defaults to `tvm.target.codegen.llvm_get_system_cpu` and
    `compute_capability_fn(index)` to `tvm.cuda(index).compute_version` (both import tvm lazily);
    `num_cores` defaults to `host_cpu_count()`. No "mtriple" is set: LLVM's default triple is the
    host's, and the one TVM reports may name the toolchain vendor (e.g. "x86_64-conda-linux-gnu").
    """
    device = parse_device(device)
    if device.kind == "cpu":
        mcpu = (host_cpu_fn or _llvm_host_cpu)()
        return {"kind": "llvm", "mcpu": mcpu, "num-cores": int(num_cores or host_cpu_count())}
    if device.kind == "cuda":
        capability = (compute_capability_fn or _cuda_compute_capability)(device.index)
        return {"kind": "cuda", "arch": _sm_arch(capability)}
    raise ConfigError("tvm_target needs a resolved device; call resolve_device first")
