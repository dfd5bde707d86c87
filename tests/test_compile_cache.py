"""The compile cache: warm loads do not compile (nor import tvm), bad entries are rebuilt, and
concurrent builders of one key neither fail nor corrupt it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tvmlm.compile import prepare_package


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TVMLM_CACHE_DIR", str(cache))
    return cache


def _lib_dir(pkg) -> Path:
    return (pkg.path / "lib.so").resolve().parent


def test_second_load_does_not_compile(fresh_cache, tiny_model_dir):
    first = prepare_package(tiny_model_dir("llama"), "cpu", progress=False)
    assert first.compiled
    second = prepare_package(tiny_model_dir("llama"), "cpu", progress=False)
    assert not second.compiled and second.path == first.path


def test_warm_engine_does_not_import_tvm(fresh_cache, tiny_model_dir):
    prepare_package(tiny_model_dir("llama"), "cpu", progress=False)
    code = (
        "import sys; from tvmlm import Engine; "
        f"e = Engine({str(tiny_model_dir('llama'))!r}, device='cpu'); "
        "r = e.completions.create(prompt=[3, 4, 5], max_tokens=3); e.terminate(); "
        "print(r.usage.completion_tokens, 'tvm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["3", "False"]


def test_corrupt_library_is_rebuilt(fresh_cache, tiny_model_dir):
    pkg = prepare_package(tiny_model_dir("llama"), "cpu", progress=False)
    lib = _lib_dir(pkg) / "lib.so"
    lib.write_bytes(lib.read_bytes()[:1000])  # a truncated write, e.g. a full disk
    again = prepare_package(tiny_model_dir("llama"), "cpu", progress=False)
    assert again.compiled
    assert (_lib_dir(again) / "lib.so").stat().st_size > 1000


def test_foreign_entry_is_rebuilt(fresh_cache, tiny_model_dir):
    pkg = prepare_package(tiny_model_dir("llama"), "cpu", progress=False)
    manifest = _lib_dir(pkg) / "manifest.json"
    data = json.loads(manifest.read_text())
    data["key"] = "someone-elses-key"
    manifest.write_text(json.dumps(data))
    assert prepare_package(tiny_model_dir("llama"), "cpu", progress=False).compiled


def test_missing_params_are_reconverted(fresh_cache, tiny_model_dir):
    pkg = prepare_package(tiny_model_dir("llama"), "cpu", progress=False)
    (pkg.path / "params.safetensors").unlink()
    again = prepare_package(tiny_model_dir("llama"), "cpu", progress=False)
    assert not again.compiled  # the library was fine; only the weights were converted again
    assert (again.path / "params.safetensors").is_file()


def test_concurrent_builders(fresh_cache, tiny_model_dir):
    code = (
        "from tvmlm.compile import prepare_package; "
        f"p = prepare_package({str(tiny_model_dir('qwen2'))!r}, 'cpu', progress=False); "
        "print(p.path, p.compiled)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    paths = {r[0].split()[0] for r in results}
    compiled = [r[0].split()[1] for r in results]
    assert len(paths) == 1 and compiled.count("True") == 1  # the lock made the second one wait, then reuse
    assert list((fresh_cache / "libs").glob(".*")) == [] and list((fresh_cache / "models").glob(".*")) == []


def test_library_key_changes_with_the_model_code(tmp_path, monkeypatch):
    """A checkout whose kernels changed without a version bump never reuses the old library."""
    import shutil

    import tvmlm.compile_keys as compile_mod

    root = Path(compile_mod.__file__).parent
    copy = tmp_path / "tvmlm"
    for sub in ("models", "weights"):
        shutil.copytree(root / sub, copy / sub)
    monkeypatch.setattr(compile_mod, "__file__", str(copy / "compile_keys.py"))
    compile_mod.code_fingerprint.cache_clear()
    try:
        before = compile_mod.code_fingerprint()
        kernel = copy / "models" / "llama.py"
        kernel.write_text(kernel.read_text() + "\n# changed\n")
        compile_mod.code_fingerprint.cache_clear()
        assert compile_mod.code_fingerprint() != before
    finally:
        compile_mod.code_fingerprint.cache_clear()


@pytest.mark.unit
def test_source_index_key_changes_with_the_model_code(tmp_path, monkeypatch):
    """The warm path's source index is keyed on the code too: after a kernel change it misses, so
    the package is rebuilt instead of the old one being handed out (the library key alone is not
    enough: the index maps straight to a package)."""
    import tvmlm.compile_keys as keys

    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF" + bytes(64))
    before = keys.source_key([str(weights)], {"kind": "llvm"}, keys.CompileOptions())
    assert keys.source_key([str(weights)], {"kind": "llvm"}, keys.CompileOptions()) == before
    monkeypatch.setattr(keys, "code_fingerprint", lambda: "changed")
    assert keys.source_key([str(weights)], {"kind": "llvm"}, keys.CompileOptions()) != before
