"""tvmlm: an LLM inference engine running TVM-compiled models through a C++ threaded core.

    from tvmlm import Engine
    with Engine("path/to/model") as engine:
        engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])

The names below load on first use, so `import tvmlm._core` (the C++ core alone, as the GPU check
and C++-only tools use it) needs none of the Python API's dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

_LAZY = {
    "AsyncEngine": ".async_engine",
    "Engine": ".engine",
    "EngineConfig": ".config",
    "ConfigError": ".errors",
    "DeviceError": ".errors",
    "EngineClosedError": ".errors",
    "ModelError": ".errors",
    "ModelNotFoundError": ".errors",
    "OutOfMemoryError": ".errors",
    "RequestError": ".errors",
    "TvmlmError": ".errors",
}

__all__ = [
    "AsyncEngine",
    "ConfigError",
    "DeviceError",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "ModelError",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "RequestError",
    "TvmlmError",
    "__version__",
    "cmake_dir",
]

if TYPE_CHECKING:
    from .async_engine import AsyncEngine
    from .config import EngineConfig
    from .engine import Engine
    from .errors import (
        ConfigError,
        DeviceError,
        EngineClosedError,
        ModelError,
        ModelNotFoundError,
        OutOfMemoryError,
        RequestError,
        TvmlmError,
    )


def cmake_dir() -> str:
    """Directory holding tvmlmConfig.cmake, for C++ hosts: `cmake -Dtvmlm_DIR=$(python -c
    "import tvmlm; print(tvmlm.cmake_dir())")` then `find_package(tvmlm CONFIG)`."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("tvmlm._core")  # the binaries' install dir (also for editable installs)
    if spec is None or spec.origin is None:
        raise RuntimeError("tvmlm's compiled part is not installed (pip install tvmlm)")
    return os.path.join(os.path.dirname(spec.origin), "share", "cmake", "tvmlm")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tvmlm' has no attribute {name!r}")
