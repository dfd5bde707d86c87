"""A safetensors file's header, read and checked without reading tensor data.

The checks are those of the `safetensors` library (header length, UTF-8 JSON object, known dtypes,
shapes of non-negative integers, each tensor's byte range matching its shape and dtype, ranges
contiguous from 0 and ending exactly at the end of the file), done first so that a bad file gives a
`ModelFileError` that names the file, the tensor and what was expected instead of a raw
`SafetensorError` (or a wrong array later). Cost: one read of the JSON header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelFileError

__all__ = ["DTYPE_BITS", "read_safetensors_header"]

# safetensors dtype name -> bits per element.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
_MAX_HEADER = 100_000_000  # the safetensors library's limit


def read_safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor in the safetensors file at `path`, after checking the
    header as the module docstring says. `__metadata__` is checked and left out."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(path, "header length", f"truncated: needs bytes 0-8, the file has {size:,}")
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER or 8 + n > size:
            raise ModelFileError(
                path, "header length",
                f"is {n:,} bytes: expected at most {min(_MAX_HEADER, size - 8):,} (truncated or not a safetensors file)",
            )
        raw = f.read(n)
    header = _parse_json(path, raw)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise ModelFileError(path, "__metadata__", f"is {_short(info)}: expected an object of strings")
            continue
        dtype, shape, begin, end = _tensor_entry(path, name, info)
        tensors[name] = (dtype, shape)
        ranges.append((begin, end, name, dtype, shape))
    data_size = size - 8 - n
    position = 0
    for begin, end, name, dtype, shape in sorted(ranges):
        count = 1
        for d in shape:
            count *= d
        nbytes = count * DTYPE_BITS[dtype] // 8
        if begin != position or end - begin != nbytes:
            raise ModelFileError(
                path, f"tensor {name!r}",
                f"has data_offsets [{begin:,}, {end:,}]: expected [{position:,}, {position + nbytes:,}] "
                f"({dtype} {list(shape)} after the previous tensor)",
            )
        position = end
    if position != data_size:
        what = "truncated" if position > data_size else "has trailing bytes"
        raise ModelFileError(
            path, "data",
            f"{what}: the tensors need bytes {8 + n:,}-{8 + n + position:,}, the file has {size:,}",
        )
    return tensors


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _parse_json(path: Path, raw: bytes) -> dict[str, Any]:
    if not raw.startswith(b"{"):  # the safetensors library refuses anything else, whitespace included
        raise ModelFileError(path, "header", f"starts with {raw[:16]!r}: expected a JSON object ('{{')")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(path, "header", f"is not a valid JSON object: {exc}") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "header", f"is {_short(header)}: expected a JSON object")
    return header


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tensor_entry(path: Path, name: str, info: Any) -> tuple[str, tuple[int, ...], int, int]:
    what = f"tensor {name!r}"
    if not isinstance(info, dict):
        raise ModelFileError(path, what, f"is {_short(info)}: expected an object with dtype, shape, data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise ModelFileError(path, what, f"has dtype {_short(dtype)}: expected one of {', '.join(DTYPE_BITS)}")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise ModelFileError(path, what, f"has shape {_short(shape)}: expected a list of integers >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise ModelFileError(path, what, f"has data_offsets {_short(offsets)}: expected [begin, end], integers >= 0")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
