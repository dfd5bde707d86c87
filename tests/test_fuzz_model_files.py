"""Hypothesis: random byte flips and truncations of a tiny GGUF and a tiny safetensors checkpoint.

Every outcome must be a `ModelError`, or a model that loads and is usable: every tensor comes out
in the shape its config implies (and, when only tensor data changed, the same config and tensors
as the original; a truncation may only drop bytes nothing needs). Never another exception, a crash
or a hang. Each example runs the checks and the loader, not a compile: ~5-100 ms.
TVMLM_FUZZ_EXAMPLES raises the example count (200 in CI, derandomized so CI is repeatable).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from fuzz_settings import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from tvmlm.errors import ModelError
from tvmlm.testing import make_gguf_model
from tvmlm.weights import load
from tvmlm.weights.checks import expected_shapes

FUZZ = fuzz_settings()
HANG_SECONDS = 20


@contextlib.contextmanager
def _time_limit(seconds: int):
    def hang(*_):
        raise AssertionError(f"loading took over {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _outcome(path: Path):
    """(config, {name: array}) of a model that loads, or None for a ModelError."""
    with _time_limit(HANG_SECONDS):
        try:
            m = load(path)
            tensors = {name: np.asarray(a) for name, a in m.tensors()}
        except ModelError:
            return None
    expected, _ = expected_shapes(m.config)
    for name, array in tensors.items():
        if name in expected:
            assert array.shape == expected[name], (name, array.shape, expected[name])
    return m.config, tensors


def _same(a, b) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(
        np.array_equal(a[1][k], b[1][k], equal_nan=True) for k in a[1]
    )


class _Case:
    """A model file to mutate (`file`, loaded as `model`): its bytes, where its header ends, and
    what the unchanged model loads as."""

    def __init__(self, file: Path, model: Path, header_end: int):
        self.file, self.model, self.data, self.header_end = file, model, file.read_bytes(), header_end
        self.original = _outcome(model)
        assert self.original is not None

    def write(self, data: bytes) -> Path:
        self.file.write_bytes(data)
        return self.model


@pytest.fixture(scope="module")
def gguf_case(tiny_model_dir, tmp_path_factory):
    """The tiny llama as GGUF, Q8_0 2-D weights (block-size rules apply), F32 norms."""
    from tvmlm.weights.check_gguf import read_gguf_header

    path = make_gguf_model(tiny_model_dir("llama"), tmp_path_factory.mktemp("fuzz") / "tiny.gguf", "Q8_0")
    return _Case(path, path, read_gguf_header(path).data_start)


@pytest.fixture(scope="module")
def safetensors_case(tiny_model_dir, tmp_path_factory):
    """The tiny llama's HF directory, its checkpoint rewritten with half the tensors in BF16."""
    d = tmp_path_factory.mktemp("fuzz") / "hf"
    shutil.copytree(tiny_model_dir("llama"), d)
    _mix_bf16(d / "model.safetensors")
    n = int.from_bytes((d / "model.safetensors").read_bytes()[:8], "little")
    return _Case(d / "model.safetensors", d, 8 + n)


def _mix_bf16(path: Path) -> None:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    header, blobs, offset = {}, [], 0
    for i, (name, a) in enumerate(sorted(tensors.items())):
        raw = (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes() if i % 2 else a.tobytes()
        header[name] = {"dtype": "BF16" if i % 2 else "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


_KINDS = st.sampled_from(["bit", "byte", "zero", "ff"])


def _mutate(data: bytes, edits: list[tuple[int, str, int]]) -> bytes:
    out = bytearray(data)
    for pos, kind, value in edits:
        pos %= len(out)
        out[pos] = {"bit": out[pos] ^ (1 << (value % 8)), "byte": value % 256, "zero": 0, "ff": 255}[kind]
    return bytes(out)


def _edits(data, case: _Case) -> list[tuple[int, str, int]]:
    """1-4 byte edits, their positions half the time inside the header (most of the structure)."""
    where = st.one_of(st.integers(0, case.header_end - 1), st.integers(0, len(case.data) - 1))
    return data.draw(st.lists(st.tuples(where, _KINDS, st.integers(0, 255)), min_size=1, max_size=4))


def _check_flips(case: _Case, edits) -> None:
    got = _outcome(case.write(_mutate(case.data, edits)))
    if got is not None and all(pos % len(case.data) >= case.header_end for pos, _, _ in edits):
        # Only tensor data changed: the same model, up to the changed values.
        assert got[0] == case.original[0] and got[1].keys() == case.original[1].keys()


def _check_truncation(case: _Case, cut: int) -> None:
    got = _outcome(case.write(case.data[:cut]))
    assert got is None or _same(got, case.original), f"a file cut to {cut} bytes loaded as a different model"


@pytest.fixture(scope="module")
def cases(gguf_case, safetensors_case) -> dict[str, _Case]:
    return {"gguf": gguf_case, "safetensors": safetensors_case}


@pytest.mark.parametrize("kind", ["gguf", "safetensors"])
@FUZZ
@given(data=st.data())
def test_byte_flips(cases, kind, data):
    _check_flips(cases[kind], _edits(data, cases[kind]))


@pytest.mark.parametrize("kind", ["gguf", "safetensors"])
@FUZZ
@given(data=st.data())
def test_truncations(cases, kind, data):
    case = cases[kind]
    _check_truncation(case, data.draw(st.one_of(st.integers(0, case.header_end), st.integers(0, len(case.data) - 1))))
