"""tvmlm's CPU rope kernel (models/cpu_rope.py) against TVM's fused_rope: the same q, k, v."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm.relax.frontend.nn.llm.position_embedding import llama_rope_with_position_map  # noqa: E402

from tvmlm.models.cpu_rope import fused_rope_cpu  # noqa: E402

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def _run(func, qkv, positions, h_q, h_kv, apply_rope):
    dev = tvm.cpu()
    n, _, d = qkv.shape
    outs = [tvm.runtime.tensor(np.zeros((n, h, d), qkv.dtype), dev) for h in (h_q, h_kv, h_kv)]
    func(tvm.runtime.tensor(qkv, dev), tvm.runtime.tensor(positions, dev), *outs, apply_rope)
    return [o.numpy() for o in outs]


@pytest.mark.parametrize("rope_scaling", [{}, LLAMA3])
@pytest.mark.parametrize("h_q,h_kv,d,dtype", [(9, 3, 64, "float32"), (4, 4, 32, "float32"), (6, 2, 64, "float16")])
@pytest.mark.parametrize("apply_rope", [1, 0])
def test_rope_matches_tvm(rope_scaling, h_q, h_kv, d, dtype, apply_rope):
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    theta = 100000.0
    ours = tvm.compile(fused_rope_cpu(theta, d, h_q, h_kv, dtype, rope_scaling, d), target=target)
    ref = tvm.compile(llama_rope_with_position_map(theta, 1, d, h_q, h_kv, dtype, rope_scaling, d), target=target)
    rng = np.random.default_rng(d + h_q)
    qkv = rng.standard_normal((37, h_q + 2 * h_kv, d)).astype(dtype)
    positions = rng.integers(0, 5000, 37).astype("int32")  # a ragged batch: any positions
    for got, want in zip(_run(ours, qkv, positions, h_q, h_kv, apply_rope), _run(ref, qkv, positions, h_q, h_kv, apply_rope)):
        np.testing.assert_array_equal(got, want)
