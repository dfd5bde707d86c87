"""tvmlm: an LLM inference engine running TVM-compiled models through a C++ threaded core.

    from tvmlm import Engine
    with Engine("path/to/model") as engine:
        engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
"""

__version__ = "0.1.0"

from .config import EngineConfig  # noqa: E402
from .engine import Engine  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError,
    DeviceError,
    EngineClosedError,
    ModelError,
    OutOfMemoryError,
    RequestError,
    TvmlmError,
)

__all__ = [
    "ConfigError",
    "DeviceError",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "ModelError",
    "OutOfMemoryError",
    "RequestError",
    "TvmlmError",
    "__version__",
]
