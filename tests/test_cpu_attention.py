"""tvmlm's CPU ragged-prefill attention kernel vs TVM's original one, on random inputs."""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm.relax.frontend.nn.llm._prefill_kernels import _attention_prefill_ragged_cpu  # noqa: E402

from tvmlm.models.cpu_attention import ragged_prefill_cpu  # noqa: E402

_TARGET = {"kind": "llvm", "num-cores": 2}


def _run(func, q, qi, k, v, ki, causal, sm_scale):
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((q.shape[0], q.shape[1], v.shape[2]), "float32"), dev)
    lse = tvm.runtime.tensor(np.zeros(q.shape[:2], "float32"), dev)
    args = [tvm.runtime.tensor(x, dev) for x in (q, qi, k, v, ki, np.zeros(len(q), "int32"), np.zeros(len(qi) - 1, "int32"))]
    func(*args, out, lse, causal, 0, 1.0, 10000.0, sm_scale)
    return out.numpy(), lse.numpy()


@pytest.mark.parametrize(
    "h_kv,group,d,qlens,kvlens",
    [
        (2, 1, 32, [7], [7]),
        (3, 3, 64, [5, 1, 17, 40], [5, 9, 17, 70]),  # kv_len > qo_len: causal offsets
        (2, 4, 32, [33, 64, 3], [33, 100, 35]),
        (1, 4, 64, [1, 2, 65], [130, 2, 65]),
    ],
)
@pytest.mark.parametrize("causal", [1, 0])
def test_ragged_prefill_matches_tvm(h_kv, group, d, qlens, kvlens, causal):
    h_q = h_kv * group
    target = tvm.target.Target(_TARGET)
    ours = tvm.compile(ragged_prefill_cpu(h_kv, h_q, d, d, "float32"), target=target)
    ref = tvm.compile(_attention_prefill_ragged_cpu(h_kv, h_q, d, d, "float32", {}), target=target)
    rng = np.random.default_rng(h_q * d + len(qlens))
    q = rng.standard_normal((sum(qlens), h_q, d)).astype("float32")
    k = rng.standard_normal((sum(kvlens), h_kv, d)).astype("float32")
    v = rng.standard_normal((sum(kvlens), h_kv, d)).astype("float32")
    qi = np.cumsum([0, *qlens]).astype("int32")
    ki = np.cumsum([0, *kvlens]).astype("int32")
    sm_scale = 1.0 / np.sqrt(d)
    o1, l1 = _run(ours, q, qi, k, v, ki, causal, sm_scale)
    o2, l2 = _run(ref, q, qi, k, v, ki, causal, sm_scale)
    assert np.abs(o1 - o2).max() <= 1e-4
    assert np.abs(l1 - l2).max() <= 1e-4


def test_pass_replaces_ragged_kernel_keeping_global_var():

    from tvmlm.compile import CompileOptions
    from tvmlm.models.build import build_module
    from tvmlm.models.cpu_attention import replace_cpu_attention_kernels

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    }
    mod = build_module(config, "cpu", None, CompileOptions()).mod
    gvs = {gv.name_hint: gv for gv in mod.get_global_vars()}
    gv = gvs["batch_prefill_ragged_kv"]
    before = mod[gv]
    after = replace_cpu_attention_kernels()(mod)
    assert {g.name_hint for g in after.get_global_vars()} == set(gvs)
    assert not after[gv].same_as(before)
    assert "T.parallel" in after[gv].script()
