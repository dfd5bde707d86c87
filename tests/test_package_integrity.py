"""A compiled package changed after its build is caught by the hashes its manifest recorded:
refused with a ModelFileError when given to `Engine`, rebuilt when it is a compile-cache entry."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tvmlm import Engine, integrity
from tvmlm.compile import LIB_FILES, _entry_is_valid, prepare_package
from tvmlm.errors import ModelFileError


@pytest.fixture
def package(tiny_package, tmp_path) -> Path:
    """A copy of the tiny llama's compiled package (lib.so copied, not linked)."""
    d = tmp_path / "pkg"
    shutil.copytree(tiny_package("llama").path, d, symlinks=False)
    return d


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _reshape_first_param(meta: dict) -> None:
    meta["params"][0]["shape"] = [1, *meta["params"][0]["shape"]]


CASES = {
    "lib.so-same-size-other-bytes": (lambda d: _flip(d / "lib.so", 5000), ["lib.so was modified", "SHA-256"]),
    "lib.so-truncated": (lambda d: (d / "lib.so").write_bytes((d / "lib.so").read_bytes()[:1000]), ["lib.so has 1,000 bytes"]),
    "params-one-byte-changed": (lambda d: _flip(d / "params.safetensors", -100), ["params.safetensors was modified"]),
    "tokenizer-replaced": (lambda d: (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text().replace("im_end", "im_fin")),
                           ["tokenizer.json"]),
    "manifest-edited": (lambda d: _edit_json(d / "manifest.json", lambda m: m.update(created=0)), ["manifest.json was edited"]),
    "manifest-hash-edited": (lambda d: _edit_json(d / "manifest.json", lambda m: m["files"]["lib.so"].update(sha256="0" * 64)),
                             ["manifest.json was edited"]),
    "metadata-edited-no-manifest": (lambda d: ((d / "manifest.json").unlink(), _edit_json(d / "metadata.json", _reshape_first_param)),
                                    ["params.safetensors", "metadata.json expects"]),
    "params-cut-no-manifest": (lambda d: ((d / "manifest.json").unlink(), (d / "params.safetensors").write_bytes(b"\x10")),
                               ["params.safetensors", "truncated"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampered_package_is_refused(package, case):
    mutate, parts = CASES[case]
    mutate(package)
    with pytest.raises(ModelFileError) as info:
        Engine(package, device="cpu")
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


def test_untouched_copy_loads(package):
    with Engine(package, device="cpu") as engine:
        assert engine.completions.create(prompt=[3, 4], max_tokens=2).usage.completion_tokens == 2


def test_large_files_use_mtime_then_full_hash(package, monkeypatch):
    """Files above FULL_HASH_BYTES: size + sampled hash + mtime; a new mtime costs one full hash,
    then is recorded; a same-size edit is caught even with the mtime forged back."""
    monkeypatch.setattr(integrity, "FULL_HASH_BYTES", 0)
    names = ["lib.so", "metadata.json", "params.safetensors"]
    manifest = integrity.manifest_entry(package, names, {"key": "k"})
    (package / "manifest.json").write_text(json.dumps(manifest))
    assert "mtime_ns" in manifest["files"]["params.safetensors"]
    params = package / "params.safetensors"
    os.utime(params, ns=(params.stat().st_atime_ns, params.stat().st_mtime_ns + 10**9))  # touched, unchanged
    assert integrity.verify(package, manifest) is None
    recorded = json.loads((package / "manifest.json").read_text())
    assert recorded["files"]["params.safetensors"]["mtime_ns"] == params.stat().st_mtime_ns
    mtime = params.stat().st_mtime_ns
    _flip(params, params.stat().st_size * 17 // 32)  # a byte between two sampled blocks
    os.utime(params, ns=(mtime, mtime))
    assert integrity.verify(package, recorded) is None  # the documented blind spot: forged mtime
    os.utime(params, ns=(mtime, mtime + 1))
    assert "SHA-256 differs" in integrity.verify(package, recorded)


def test_tampered_cache_entry_is_rebuilt(tiny_model_dir, tiny_package, tmp_path, monkeypatch):
    """A cache entry whose params were changed is converted again (no compile: the library is
    intact), and one whose library was changed is invalid (so it would be compiled again)."""
    pkg = tiny_package("llama")
    lib_dir = (pkg.path / "lib.so").resolve().parent
    root = tmp_path / "cache"
    shutil.copytree(pkg.path, root / "models" / pkg.path.name, symlinks=True)
    shutil.copytree(lib_dir, root / "libs" / lib_dir.name)
    monkeypatch.setenv("TVMLM_CACHE_DIR", str(root))
    params = root / "models" / pkg.path.name / "params.safetensors"
    original = load_file(str(params))
    _flip(params, -100)
    again = prepare_package(tiny_model_dir("llama"), "cpu", progress=False)
    assert not again.compiled and again.path == root / "models" / pkg.path.name
    restored = load_file(str(params))
    assert all(np.array_equal(restored[k], v) for k, v in original.items() if not k.startswith("__pad__"))
    lib = root / "libs" / lib_dir.name / "lib.so"
    assert _entry_is_valid(lib.parent, lib_dir.name, LIB_FILES)
    _flip(lib, 5000)
    assert not _entry_is_valid(lib.parent, lib_dir.name, LIB_FILES)
