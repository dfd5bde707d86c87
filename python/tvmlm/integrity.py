"""Compiled packages (and cache entries) that were changed after they were built are caught.

At build, `manifest_entry()` records for every file its size and SHA-256, plus for large files
(params.safetensors) the mtime and a sampled hash, and seals the manifest with a digest of its own
content. `verify()` then costs, per load:
- files up to `FULL_HASH_BYTES` (lib.so, metadata.json, tokenizer files): a full SHA-256 (lib.so is
  code the process will run; SmolLM2's 1.4 MB lib hashes in ~2 ms);
- larger files: size, the sampled hash (the first 64 KiB and 16 evenly spaced 4 KiB blocks: < 1 ms
  from the page cache) and the mtime; a different mtime (a rewrite, a copy) costs one full SHA-256
  of the file, after which the new mtime is recorded so the next load is fast again. A same-size
  edit between sampled blocks with the mtime forged back is the one change this does not catch.
The compile cache rebuilds an entry that fails (compile.py); `check_package()` refuses a compiled
package given to `Engine` with a `ModelFileError` naming the file, after checking that
metadata.json and params.safetensors agree (names, shapes, dtypes), manifest or not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .errors import ModelFileError

logger = logging.getLogger("tvmlm")

__all__ = ["FULL_HASH_BYTES", "check_package", "manifest_entry", "verify"]

FULL_HASH_BYTES = 32 << 20
_SAMPLES, _SAMPLE_BYTES, _HEAD_BYTES = 16, 4096, 64 << 10
_NUMPY_TO_SAFETENSORS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int8": "I8",
                         "uint8": "U8", "int16": "I16", "uint16": "U16", "int32": "I32", "uint32": "U32",
                         "int64": "I64", "uint64": "U64", "bool": "BOOL"}  # fmt: skip


def _full_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sampled_hash(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_HEAD_BYTES))
        for i in range(_SAMPLES):
            f.seek(size * i // _SAMPLES)
            h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    record = {"size": st.st_size, "sha256": _full_hash(path)}
    if st.st_size > FULL_HASH_BYTES:
        record |= {"mtime_ns": st.st_mtime_ns, "sampled_sha256": _sampled_hash(path, st.st_size)}
    return record


def _seal(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def manifest_entry(directory: Path, names: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """The manifest of `directory`: `extra` plus the records of the files `names` (those present),
    sealed with its digest."""
    manifest = dict(extra)
    manifest["files"] = {name: _file_record(directory / name) for name in names if (directory / name).is_file()}
    manifest["digest"] = _seal(manifest)
    return manifest


def verify(directory: Path, manifest: dict[str, Any]) -> str | None:
    """None when every recorded file is as built; else what differs (one sentence)."""
    if manifest.get("digest") != _seal(manifest):
        return "manifest.json was edited after the build (its digest does not match its content)"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "manifest.json records no file hashes"
    refreshed = False
    for name, record in files.items():
        path = directory / name
        try:
            st = path.stat()
        except OSError:
            return f"{name} is missing"
        if st.st_size != record.get("size"):
            return f"{name} has {st.st_size:,} bytes, {record.get('size'):,} when built"
        if "mtime_ns" not in record:
            if _full_hash(path) != record.get("sha256"):
                return f"{name} was modified after the build (SHA-256 differs)"
            continue
        if _sampled_hash(path, st.st_size) != record.get("sampled_sha256"):
            return f"{name} was modified after the build (sampled SHA-256 differs)"
        if st.st_mtime_ns != record["mtime_ns"]:
            if _full_hash(path) != record.get("sha256"):
                return f"{name} was modified after the build (SHA-256 differs)"
            record["mtime_ns"], refreshed = st.st_mtime_ns, True
    if refreshed:
        _rewrite(directory, manifest)
    return None


def _rewrite(directory: Path, manifest: dict[str, Any]) -> None:
    """Record new mtimes (a copied cache, say) so the next load skips the full hash; best effort."""
    manifest["digest"] = _seal(manifest)
    tmp = directory / f".manifest.json.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, directory / "manifest.json")
    except OSError:
        tmp.unlink(missing_ok=True)


def check_package(path: Path) -> dict[str, Any]:
    """A compiled package given by the user: its metadata.json (returned), params.safetensors
    against it, and, when it has a manifest.json, every file against the manifest."""
    from .weights.check_safetensors import read_safetensors_header
    from .weights.check_json import read_json_file

    meta = read_json_file(path / "metadata.json")
    params = meta.get("params")
    if not isinstance(params, list) or not all(isinstance(p, dict) and {"name", "shape", "dtype"} <= set(p) for p in params):
        raise ModelFileError(path / "metadata.json", "field 'params'", "is missing or malformed: expected a list of {name, shape, dtype}")
    stored = read_safetensors_header(path / "params.safetensors")
    for p in params:
        want = (_NUMPY_TO_SAFETENSORS.get(p["dtype"], p["dtype"]), tuple(p["shape"]))
        if stored.get(p["name"]) != want:
            raise ModelFileError(
                path / "params.safetensors", f"tensor {p['name']!r}",
                f"is {stored.get(p['name'], 'missing')}: metadata.json expects {want}",
            )
    if (path / "manifest.json").is_file():
        problem = verify(path, read_json_file(path / "manifest.json"))
        if problem is not None:
            raise ModelFileError(
                path, "package", f"is not as built: {problem}. Rebuild it from the model's weights "
                "(delete this directory and load the model's source) or restore the file.",
            )
    return meta
