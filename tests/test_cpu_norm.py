"""tvmlm's CPU RMSNorm kernel against numpy, through the same LegalizeOps hook the pipeline uses."""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402
from tvm.script import relax as R  # noqa: E402

from tvmlm.models.cpu_norm import legalize_map  # noqa: E402


def _rms_norm_module(hidden: int, rows_axis: int, dtype: str = "float32"):
    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64")
    shape = (1, n, hidden) if rows_axis == 1 else (n, 1, hidden)
    x = relax.Var("x", R.Tensor(shape, dtype))
    w = relax.Var("w", R.Tensor((hidden,), dtype))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.rms_norm(x, w, axes=[-1], epsilon=1e-5))
        bb.emit_func_output(y)
    return relax.transform.LegalizeOps(legalize_map())(bb.get())


def _ours(mod) -> bool:
    return any(isinstance(f, tvm.tirx.PrimFunc) and "T.parallel" in f.script() for f in mod.functions.values())


@pytest.mark.parametrize("hidden,rows_axis,rows", [(576, 1, 300), (576, 1, 3), (64, 0, 1), (64, 0, 40), (96, 1, 33)])
def test_rms_norm_matches_numpy(hidden, rows_axis, rows):
    mod = _rms_norm_module(hidden, rows_axis)
    assert _ours(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2})), tvm.cpu())
    rng = np.random.default_rng(rows)
    shape = (1, rows, hidden) if rows_axis == 1 else (rows, 1, hidden)
    x = (3 * rng.standard_normal(shape)).astype("float32")
    w = rng.standard_normal(hidden).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w)).numpy()
    ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)


def test_other_shapes_keep_tvms_legalization():
    mod = _rms_norm_module(40, 1)  # 40 is not a multiple of the 16 vector lanes
    assert not _ours(mod)
    assert any(isinstance(f, tvm.tirx.PrimFunc) for f in mod.functions.values())
