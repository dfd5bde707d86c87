"""The C++ host path: examples/cpp_host builds against the installed package with
find_package(tvmlm) and generates the same greedy tokens as the Python bindings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tvmlm
from tvmlm import _core

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp_host"


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and a C++ compiler")
def test_cpp_host_example(tmp_path, tiny_package):
    pkg = tiny_package("llama").path
    build = tmp_path / "build"
    cmake = shutil.which("cmake") or "cmake"
    subprocess.run([cmake, "-S", str(EXAMPLE), "-B", str(build), f"-Dtvmlm_DIR={tvmlm.cmake_dir()}",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True, text=True)
    subprocess.run([cmake, "--build", str(build), "-j", "2"], check=True, capture_output=True, text=True)
    prompt = [5, 17, 300, 42]
    run = subprocess.run([str(build / "tvmlm_host"), str(pkg), *map(str, prompt)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    tokens_line, finish_line = run.stdout.strip().splitlines()
    assert finish_line == "finish_reason=length"

    model = _core.Model(str(pkg), "cpu:0", 2)
    model.create_kv_cache(1, 512, 128)
    model.add_sequence(0)
    expected = [int(np.argmax(model.prefill([0], [prompt])[0]))]
    for _ in range(7):
        expected.append(int(np.argmax(model.decode([0], [expected[-1]])[0])))
    assert [int(t) for t in tokens_line.split()] == expected
