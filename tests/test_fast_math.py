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
