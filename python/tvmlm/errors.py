"""tvmlm's exception hierarchy.

Every error tvmlm raises on purpose derives from `TvmlmError`, so callers can catch the library's
errors in one place. Each class also derives from the builtin a caller would naturally catch for
that kind of mistake (a bad value is a `ValueError`, running out of memory a `MemoryError`), so
code written against plain Python exceptions keeps working.
"""

from __future__ import annotations

from typing import Any, Iterable


class TvmlmError(Exception):
    """Base class of all errors raised by tvmlm."""


class ConfigError(TvmlmError, ValueError):
    """A bad argument or configuration value (engine config, mode, device string)."""

    @classmethod
    def bad_value(cls, field: str, value: Any, allowed: str | Iterable[Any]) -> "ConfigError":
        """Build the standard message: which field, what it got, what it accepts.

        `allowed` is either prose ("an integer >= 1") or an iterable of the accepted values.
        """
        if not isinstance(allowed, str):
            allowed = "one of " + ", ".join(repr(a) for a in allowed)
        return cls(f"{field}={value!r} is invalid: expected {allowed}")


class ModelError(TvmlmError, ValueError):
    """The model path, its files, its metadata or its architecture is unusable."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model path (or a file it needs) does not exist."""


class ModelFileError(ModelError):
    """A model file is malformed. `file` is its path, `where` the field, key or tensor at fault;
    the message adds what was found and what was expected."""

    def __init__(self, file: Any, where: str, problem: str):
        self.file, self.where, self.problem = str(file), where, problem
        super().__init__(f"{self.file}: {where} {problem}")

    def __reduce__(self):  # picklable (e.g. across processes) despite the 3-argument constructor
        return type(self), (self.file, self.where, self.problem)


class DeviceError(TvmlmError, RuntimeError):
    """The requested device does not exist or cannot be used."""


class OutOfMemoryError(TvmlmError, MemoryError):
    """The requested configuration does not fit the device's memory.

    The message says how much is needed, how much is available, and what to lower.
    """


class EngineClosedError(TvmlmError, RuntimeError):
    """The engine was terminated; no new requests are accepted."""


class RequestError(TvmlmError, ValueError):
    """A request (chat/completion arguments) failed validation."""
