"""Byte-level edits of GGUF and safetensors files for the malformed-file tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable


def patch(data: bytes, offset: int, value: bytes) -> bytes:
    """`data` with `value` written at `offset`."""
    return data[:offset] + value + data[offset + len(value) :]


def _after_string(data: bytes, text: str) -> int:
    needle = struct.pack("<Q", len(text)) + text.encode()
    at = data.find(needle)
    assert at >= 0, f"{text!r} not found"
    return at + 8 + len(text.encode())


def gguf_kv_offset(data: bytes, key: str) -> int:
    """Offset of the value type (u32) of metadata `key`; its value follows."""
    return _after_string(data, key)


def gguf_tensor_info_offset(data: bytes, name: str) -> int:
    """Offset of tensor `name`'s n_dims (u32); dims (u64 each), type (u32), offset (u64) follow."""
    return _after_string(data, name)


def rewrite_safetensors_header(path: Path, edit: Callable[[dict], object]) -> None:
    """Apply `edit` to the JSON header of the safetensors file at `path`, keeping the data bytes."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
