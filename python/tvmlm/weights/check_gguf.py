"""A GGUF file's header, read and checked before the `gguf` package's reader touches it.

`read_gguf_header(path)` parses the magic, version, metadata key/values and tensor infos with
bounds checks at every step (counts against the bytes left, strings as UTF-8, known value and
tensor types, dims, alignment), then checks that every tensor's bytes lie inside the file and that
no two overlap. Tensor data is never read, so this costs one pass over the header (~tens of ms for
a 49k-token vocabulary). Anything wrong raises `ModelFileError` naming the file, the key or tensor,
and what was expected; a file that passes is one `gguf.GGUFReader` parses without surprises.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import ModelFileError

__all__ = ["GGUFHeader", "GGUFTensorInfo", "check_gguf_required", "read_gguf_header"]

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 2  # arrays of arrays at most (llama.cpp writes none)
# GGUF value types (gguf.GGUFValueType): struct format of the scalars; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
               7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order: fastest-varying first (ne0 = row length)
    type: GGMLQuantizationType
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (slowest first), as the tensor is used."""
        return tuple(reversed(self.dims))


@dataclasses.dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    value_types: dict[str, int]  # key -> GGUF value type of its value (9 for arrays)
    tensors: list[GGUFTensorInfo]
    data_start: int
    file_size: int


class _Cursor:
    """Little-endian reads from a memory map; every read is bounds-checked against the file."""

    def __init__(self, path: Path, buf: Any, size: int):
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise ModelFileError(
                self.path, what,
                f"truncated: needs bytes {self.pos:,}-{self.pos + n:,}, the file has {self.size:,}",
            )

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.unpack("Q", what)
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFileError(self.path, what, f"is not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        fmt = _SCALARS.get(vtype)
        if fmt is not None:
            return self.unpack(fmt, what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth < _MAX_NESTING:
            itype = self.unpack("I", what)
            count = self.unpack("Q", what)
            if itype not in _TYPE_NAMES:
                raise ModelFileError(self.path, what, f"array of unknown value type {itype}; expected 0-12")
            # Each item takes at least one byte (8 for a string's length): refuse impossible counts
            # before looping over them.
            least = struct.calcsize("<" + _SCALARS[itype]) if itype in _SCALARS else 8
            if count * least > self.size - self.pos:
                raise ModelFileError(
                    self.path, what,
                    f"truncated: an array of {count:,} {_TYPE_NAMES[itype]} values needs at least "
                    f"{count * least:,} bytes from byte {self.pos:,}, the file has {self.size:,}",
                )
            if itype in _SCALARS:
                out = list(struct.unpack_from(f"<{count}{_SCALARS[itype]}", self.buf, self.pos))
                self.pos += count * least
                return out
            return [self.value(itype, what, depth + 1) for _ in range(count)]
        raise ModelFileError(self.path, what, f"has unknown value type {vtype}; expected 0-12")


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse and check the header of the GGUF file at `path` (see the module docstring)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise ModelFileError(path, "header", f"truncated: a GGUF header needs at least 24 bytes, the file has {size:,}")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _parse(_Cursor(path, buf, size))


def _parse(cur: _Cursor) -> GGUFHeader:
    path = cur.path
    magic = bytes(cur.buf[0:4])
    if magic != _MAGIC:
        raise ModelFileError(path, "magic", f"is {magic!r}, expected {_MAGIC!r}: not a GGUF file")
    cur.pos = 4
    version = cur.unpack("I", "version")
    if version not in _VERSIONS:
        detail = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise ModelFileError(path, "version", f"is {version}{detail}, expected one of {_VERSIONS}")
    tensor_count = cur.unpack("Q", "tensor count")
    kv_count = cur.unpack("Q", "metadata count")
    # A key/value takes >= 13 bytes and a tensor info >= 32: bound the counts by the file size.
    if kv_count * 13 + tensor_count * 32 > cur.size - cur.pos:
        raise ModelFileError(
            path, "header",
            f"claims {kv_count:,} metadata entries and {tensor_count:,} tensors, more than the "
            f"{cur.size:,}-byte file can hold",
        )
    metadata: dict[str, Any] = {}
    types: dict[str, int] = {}
    for i in range(kv_count):
        key = cur.string(f"metadata key #{i}")
        if key in metadata:
            raise ModelFileError(path, f"metadata key {key!r}", "appears twice")
        vtype = cur.unpack("I", f"metadata key {key!r}")
        metadata[key] = cur.value(vtype, f"metadata key {key!r}")
        types[key] = vtype
    alignment = _alignment(path, metadata, types)
    infos = [_tensor_info(cur, i) for i in range(tensor_count)]
    data_start = -(-cur.pos // alignment) * alignment
    tensors = _place_tensors(path, infos, data_start, alignment, cur.size)
    return GGUFHeader(version, metadata, types, tensors, data_start, cur.size)


def _alignment(path: Path, metadata: dict[str, Any], types: dict[str, int]) -> int:
    if "general.alignment" not in metadata:
        return _DEFAULT_ALIGNMENT
    value = metadata["general.alignment"]
    if types["general.alignment"] != 4 or value == 0 or value & (value - 1):
        raise ModelFileError(
            path, "metadata key 'general.alignment'",
            f"is {value!r} ({_TYPE_NAMES.get(types['general.alignment'])}), expected a uint32 power of two",
        )
    return value


def _tensor_info(cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string(f"tensor #{i} name")
    what = f"tensor {name!r}"
    n_dims = cur.unpack("I", what)
    if not 1 <= n_dims <= _MAX_DIMS:
        raise ModelFileError(cur.path, what, f"has {n_dims} dimensions, expected 1-{_MAX_DIMS}")
    dims = tuple(cur.unpack("Q", what) for _ in range(n_dims))
    ggml_type = cur.unpack("I", what)
    offset = cur.unpack("Q", what)
    return name, dims, ggml_type, offset


def _place_tensors(path: Path, infos: list, data_start: int, alignment: int, size: int) -> list[GGUFTensorInfo]:
    known = {int(t): t for t in GGML_QUANT_SIZES}
    seen: set[str] = set()
    tensors = []
    for name, dims, type_id, offset in infos:
        what = f"tensor {name!r}"
        if name in seen:
            raise ModelFileError(path, what, "appears twice")
        seen.add(name)
        if type_id not in known:
            raise ModelFileError(path, what, f"has unknown GGML type {type_id}; expected one of {sorted(known)}")
        ggml_type = known[type_id]
        block, block_bytes = GGML_QUANT_SIZES[ggml_type]
        if min(dims) < 1 or dims[0] % block:
            raise ModelFileError(
                path, what,
                f"has dims {list(dims)}: expected positive sizes, the first a multiple of "
                f"{ggml_type.name}'s {block}-element block",
            )
        if offset % alignment:
            raise ModelFileError(path, what, f"data offset {offset:,} is not a multiple of the alignment {alignment}")
        count = 1
        for d in dims:
            count *= d
        nbytes = count // block * block_bytes
        start = data_start + offset
        if start + nbytes > size:
            raise ModelFileError(
                path, what,
                f"truncated: needs bytes {start:,}-{start + nbytes:,}, the file has {size:,}",
            )
        tensors.append(GGUFTensorInfo(name, dims, ggml_type, start, nbytes))
    ordered = sorted(tensors, key=lambda t: t.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.start + a.nbytes:
            raise ModelFileError(
                path, f"tensor {b.name!r}",
                f"bytes {b.start:,}-{b.start + b.nbytes:,} overlap tensor {a.name!r} "
                f"({a.start:,}-{a.start + a.nbytes:,})",
            )
    return tensors


# Metadata keys (after "<arch>.") that gguf.py's `_config` cannot do without.
_GGUF_REQUIRED = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")


def check_gguf_required(path: Path, meta: Any, reader: Any) -> None:
    """What gguf.py's `_config` and tokenizer read must be there (`meta.get(key)`, `reader.tensors`);
    called by the loader after its own checks (architecture, tensor types and names)."""
    arch = meta.get("general.architecture")
    for key in _GGUF_REQUIRED:
        if meta.get(f"{arch}.{key}") is None:
            raise ModelFileError(path, f"metadata key '{arch}.{key}'", "is missing: expected a positive integer")
    if meta.get("tokenizer.ggml.tokens") is None:
        raise ModelFileError(path, "metadata key 'tokenizer.ggml.tokens'", "is missing: expected the token list")
    if not any(t.name == "token_embd.weight" for t in reader.tensors):
        raise ModelFileError(path, "tensor 'token_embd.weight'", "is missing: expected the token embeddings")
