"""The package's params.safetensors, written tensor by tensor with every tensor 64-byte aligned.

The C++ core maps this file and hands its bytes to the compiled model in place (no copy into
anonymous memory), which needs each tensor at a 64-byte boundary: TVM's kernels assume that
alignment. Since the header (every name, dtype and shape, from the package's metadata) is known
before any tensor is converted, it is written first and each tensor goes to its offset as soon as
it is converted: conversion holds one tensor (one fused layer weight) at a time, not the model.

The file stays a valid safetensors file: the header is padded with spaces (which the format allows)
so the data starts at a 64-byte boundary, and each gap between two tensors is covered by a `uint8`
entry named `__pad__.<n>` (safetensors readers require the tensors to cover the data contiguously).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

ALIGNMENT = 64
PAD_PREFIX = "__pad__."

_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}  # fmt: skip
_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class ParamsWriter:
    """Write `specs` ([{"name", "dtype", "shape"}], the metadata's params) to `path`; call
    `write(name, array)` once per tensor in any order, then `close()` (which checks that every
    tensor was written). Use as a context manager."""

    def __init__(self, path: str | Path, specs: Iterable[dict]):
        self._specs: dict[str, dict] = {}
        header: dict[str, dict] = {}
        offset = pads = 0
        for spec in specs:
            dtype = _ST_DTYPES.get(spec["dtype"])
            if dtype is None:
                raise ValueError(f"parameter {spec['name']!r} has dtype {spec['dtype']!r}; supported: {', '.join(_ST_DTYPES)}")
            nbytes = int(np.prod(spec["shape"], dtype=np.int64)) * _ITEMSIZE.get(dtype, 1)
            start = _align(offset)
            if start > offset:
                header[f"{PAD_PREFIX}{pads}"] = {"dtype": "U8", "shape": [start - offset], "data_offsets": [offset, start]}
                pads += 1
            header[spec["name"]] = {"dtype": dtype, "shape": list(spec["shape"]), "data_offsets": [start, start + nbytes]}
            self._specs[spec["name"]] = {**spec, "start": start, "nbytes": nbytes}
            offset = start + nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        self._data_start = _align(8 + len(text))
        text += b" " * (self._data_start - 8 - len(text))
        self._path = Path(path)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, self._data_start + offset)  # gaps read as zeros
        os.pwrite(self._fd, len(text).to_bytes(8, "little") + text, 0)
        self._written: set[str] = set()

    def write(self, name: str, array: np.ndarray) -> None:
        spec = self._specs.get(name)
        if spec is None:
            raise ValueError(f"parameter {name!r} has no place in this package")
        if list(array.shape) != list(spec["shape"]):
            raise ValueError(f"parameter {name!r} has shape {list(array.shape)}, the model expects {spec['shape']}")
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        if data.nbytes != spec["nbytes"]:
            raise ValueError(f"parameter {name!r} is {data.nbytes} bytes, expected {spec['nbytes']} ({spec['dtype']})")
        done = 0
        while done < data.nbytes:
            done += os.pwrite(self._fd, data[done:], self._data_start + spec["start"] + done)
        self._written.add(name)

    def missing(self) -> list[str]:
        return sorted(set(self._specs) - self._written)

    def close(self) -> None:
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> "ParamsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
