"""models/fast_math.py: the vectorizable SiLU against numpy, including values where exp overflows."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import te  # noqa: E402

from tvmlm.models import fast_math  # noqa: E402


def test_silu_matches_numpy_including_extremes():
    x = te.placeholder((64,), "float32")
    y = te.compute((64,), lambda i: fast_math.silu(x[i]), name="silu")
    lib = tvm.compile(te.create_prim_func([x, y]), target="llvm")
    values = (np.random.default_rng(0).standard_normal(64) * 6).astype("float32")
    values[:10] = [0.0, -100.0, 100.0, -1e30, 1e30, -87.0, 88.0, 1e-8, -1e-8, 150.0]
    got = tvm.runtime.tensor(np.zeros(64, "float32"))
    lib(tvm.runtime.tensor(values), got)
    v = values.astype(np.float64)
    with np.errstate(over="ignore"):
        want = v / (1 + np.exp(-v))
    # exp(-x) is clamped to 2**126: for x below about -88 the result is x * 2**-126 instead of ~0
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)


def test_any_greater_tests_every_lane():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def kernel(a: T.Buffer((64, 16), "float32"), b: T.Buffer((64, 16), "float32"), out: T.Buffer((64,), "int32")):
        for r in T.serial(64):
            out[r] = T.if_then_else(fast_math.any_greater(a.vload([r, 0], "float32x16"), b.vload([r, 0], "float32x16")), 1, 0)

    lib = tvm.compile(fast_math.with_any_greater(kernel), target="llvm")
    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 16)).astype("float32")
    b = a + 1.0  # no lane greater...
    for r in range(48):  # ...except one lane in most rows, each lane position in turn
        b[r, r % 16] = a[r, r % 16] - (0.5 if r < 32 else 0.0)  # equal is not greater
    got = tvm.runtime.tensor(np.zeros(64, "int32"))
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(b), got)
    np.testing.assert_array_equal(got.numpy(), (a > b).any(axis=1).astype("int32"))
    assert got.numpy()[:32].all() and not got.numpy()[32:].any()
