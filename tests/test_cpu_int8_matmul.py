"""The packed matmul kernel (models/cpu_int8_matmul.py), AVX-512 VNNI and AVX2 paths, against a
numpy model of exactly what it computes: activations rounded to int8 per 32-element block, integer
dot products, float32 scales. Anything wrong in the lane / nibble / block bookkeeping shows up as
an O(1) error; the tolerance only covers float32 summation order."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvmlm.models import cpu_int8_matmul  # noqa: E402
from tvmlm.models.build import make_target  # noqa: E402
from tvmlm.weights import PackedWeight  # noqa: E402

HOST = make_target("cpu")
#: Each path compiled for the oldest CPU that has its instructions, so AVX2 code is really AVX2.
TARGETS = {
    "avx512": make_target("cpu", {"kind": "llvm", "mcpu": "icelake-server"}),
    "avx2": make_target("cpu", {"kind": "llvm", "mcpu": "haswell"}),
}


def _host_runs(isa):
    if isa == "avx512":
        return cpu_int8_matmul.isa(HOST) == "avx512"
    return cpu_int8_matmul.isa(HOST) is not None




def _quantize_rows(x):
    """x [M, K] -> (int8 values [M, K], scale per block [M, K/32]) as the kernel rounds them."""
    blocks = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(blocks).max(axis=2)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    scaled = blocks * inv[..., None]
    q = np.trunc(scaled + np.copysign(np.float32(0.5), scaled))  # llvm.round: half away from zero
    return q.astype(np.int32), (amax / np.float32(127)).astype(np.float32)


def _weights(fmt, n, k, rng):
    nb = k // 32
    scale = (rng.random((n, nb)) * 0.02 + 0.001).astype(np.float16)
    if fmt == "q4_1":
        q = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
        mins = (-rng.random((n, nb)) * 0.1).astype(np.float16)
        blocks = q.reshape(n, nb, 16)
        values = np.concatenate([blocks & 15, blocks >> 4], axis=2).astype(np.int32)  # llama.cpp nibble order
        return [q, scale, mins], values, scale, mins
    q = rng.integers(-128, 128, (n, k), dtype=np.int8)  # -128 too: |w| must not wrap
    return [q, scale], q.reshape(n, nb, 32).astype(np.int32), scale, None


def _reference(x, values, scale, mins, residual=False):
    if residual:  # two digits: x's rounding, then the rounding of what it left
        xq, xd = _quantize_rows(x)
        rest = (x - (xq.reshape(len(x), -1, 32) * xd[..., None]).reshape(x.shape)).astype(np.float32)
        return _reference(x, values, scale, mins) + _reference(rest, values, scale, mins)
    xq, xd = _quantize_rows(x)
    m, k = x.shape
    dots = np.einsum("mbj,nbj->mnb", xq.reshape(m, -1, 32), values).astype(np.float64)
    y = (dots * xd[:, None, :] * scale.astype(np.float32)[None]).sum(axis=2)
    if mins is not None:
        y += ((xq.reshape(m, -1, 32).sum(axis=2) * xd)[:, None, :] * mins.astype(np.float32)[None]).sum(axis=2)
    return y


def test_isa_follows_the_target():
    assert cpu_int8_matmul.isa(TARGETS["avx512"]) == "avx512"
    assert cpu_int8_matmul.isa(TARGETS["avx2"]) == "avx2"
    assert cpu_int8_matmul.isa(make_target("cpu", {"kind": "llvm", "mcpu": "nehalem"})) is None


LEADS = [(1, 1), (3, 1), (6, 1), (1, 70), (1, 135)]  # decode [batch, 1, K], prefill [1, tokens, K]
# 80 rows: 5 groups, a partial decode tile and a partial prefill tile (on both paths' tile sizes).
# AVX2 runs the shapes that reach each of its tile and remainder loops.
CASES = [
    pytest.param(isa, lead, n, marks=pytest.mark.skipif(not _host_runs(isa), reason=f"host CPU lacks {isa}"))
    for isa in TARGETS for lead in LEADS for n in (48, 80)
    if isa == "avx512" or (n == 80 and lead in ((1, 1), (6, 1), (1, 135)))
]


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0"])
@pytest.mark.parametrize("isa, lead, n", CASES)
def test_kernel_matches_numpy(fmt, lead, n, isa):
    k = 96  # 3 blocks
    rng = np.random.default_rng(0)
    func = cpu_int8_matmul.int8_matmul(fmt, n, k, isa=isa).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGETS[isa])
    x = rng.standard_normal((*lead, k)).astype(np.float32)
    x[0, 0, :32] = 0  # an all-zero block: scale 0, no division by zero
    args, values, scale, mins = _weights(fmt, n, k, rng)
    packed = PackedWeight(fmt, args[0], args[1], args[2] if fmt == "q4_1" else None)
    args = [a for a in packed.interleaved_rows(group=16) if a is not None]  # the layout the kernel reads
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros((*lead, n), np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in [x, *args]], y)
    ref = _reference(x.reshape(-1, k), values, scale, mins).reshape(*lead, n)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


RESIDUAL_CASES = [
    pytest.param(isa, lead, marks=pytest.mark.skipif(not _host_runs(isa), reason=f"host CPU lacks {isa}"))
    for isa, lead in [("avx512", (1, 1)), ("avx512", (6, 1)), ("avx512", (1, 135)), ("avx2", (1, 1)), ("avx2", (1, 135))]
]


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0"])
@pytest.mark.parametrize("isa, lead", RESIDUAL_CASES)
def test_residual_activations_match_numpy_and_the_float_dot(fmt, lead, isa):
    """Two int8 digits per activation block: the numpy model of the two digits, and about 100x
    closer to the float32 dot of the dequantized weights than one digit."""
    n, k = 80, 96
    rng = np.random.default_rng(1)
    func = cpu_int8_matmul.int8_matmul(fmt, n, k, isa=isa, residual=True).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGETS[isa])
    x = rng.standard_normal((*lead, k)).astype(np.float32)
    x[0, 0, :32] = 0
    args, values, scale, mins = _weights(fmt, n, k, rng)
    packed = PackedWeight(fmt, args[0], args[1], args[2] if fmt == "q4_1" else None)
    args = [a for a in packed.interleaved_rows(group=16) if a is not None]
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros((*lead, n), np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in [x, *args]], y)
    flat = x.reshape(-1, k)
    ref = _reference(flat, values, scale, mins, residual=True).reshape(*lead, n)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    w = (values * scale.astype(np.float32)[..., None]).reshape(n, k)
    if mins is not None:
        w = w + np.repeat(mins.astype(np.float32), 32, axis=1)
    exact = (flat.astype(np.float64) @ w.T.astype(np.float64)).reshape(*lead, n)
    one_digit = _reference(flat, values, scale, mins).reshape(*lead, n)
    assert np.abs(y.numpy() - exact).max() < np.abs(one_digit - exact).max() / 30


def test_shapes_it_does_not_take_are_refused():
    with pytest.raises(ValueError, match="N % 16"):
        cpu_int8_matmul.int8_matmul("q4_1", 40, 96)
    with pytest.raises(ValueError, match="expected q4_1 or q8_0"):
        cpu_int8_matmul.int8_matmul("q5_0", 40, 128)
    with pytest.raises(ValueError, match="isa 'neon'"):
        cpu_int8_matmul.int8_matmul("q4_1", 48, 96, isa="neon")
