"""tvmlm's CPU ragged-prefill attention kernel vs TVM's original one, on random inputs."""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode_cpu  # noqa: E402
from tvm.relax.frontend.nn.llm._prefill_kernels import _attention_prefill_cpu, _attention_prefill_ragged_cpu  # noqa: E402

from tvmlm.models.cpu_attention_paged import decode_paged_cpu, prefill_paged_cpu  # noqa: E402
from tvmlm.models.cpu_attention_ragged import ragged_prefill_cpu  # noqa: E402

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


_PAGE = 16


def _paged_cache(rng, h_kv, d, kvlens, sliding=None):
    """Random pages [n, 2, h_kv, page, d] with each sequence's pages scattered over a shuffled page pool."""
    npages = [max(1, -(-n // _PAGE)) if n > 0 else 0 for n in kvlens]
    total = sum(npages) + 3  # a few unused pages
    pages = rng.standard_normal((total, 2, h_kv, _PAGE, d)).astype("float32")
    values = rng.permutation(total)[: sum(npages)].astype("int32")
    indptr = np.cumsum([0, *npages]).astype("int32")
    last = np.array([n - (p - 1) * _PAGE if p else 0 for n, p in zip(kvlens, npages)], "int32")
    if sliding is None:
        return pages, indptr, values, last
    offsets, sinks = sliding
    return pages, indptr, values, np.stack([last, np.array(offsets, "int32"), np.array(sinks, "int32")])


def _run_decode(func, q, pages, indptr, values, length_info, sm_scale):
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full(q.shape, 7.0, "float32"), dev)
    lse = tvm.runtime.tensor(np.full(q.shape[:2], 7.0, "float32"), dev)
    zeros = np.zeros(len(q), "int32")
    args = [tvm.runtime.tensor(x, dev) for x in (q, pages, indptr, values, length_info, zeros, zeros)]
    func(*args, out, lse, 0, 1.0, 10000.0, sm_scale)
    return out.numpy(), lse.numpy()


@pytest.mark.parametrize(
    "h_kv,group,d,kvlens",
    [
        (2, 1, 32, [1]),
        (3, 3, 64, [16, 5, 33, 140]),  # full last page, partial last pages
        (2, 4, 32, [17, 64, 3, 1, 250]),
        (1, 4, 64, [130, 2, 65]),
        (3, 3, 32, [9, 0, 40]),  # a sequence without pages
        (1, 4, 64, [300]),  # one kv head, one sequence: its keys in 8 parallel splits, merged
    ],
)
def test_decode_matches_tvm(h_kv, group, d, kvlens):
    h_q = h_kv * group
    target = tvm.target.Target(_TARGET)
    ours = tvm.compile(decode_paged_cpu(h_kv, h_q, d, "float32"), target=target)
    ref = tvm.compile(_attention_decode_cpu(h_kv, h_q, d, "float32", False, {}), target=target)
    rng = np.random.default_rng(h_q * d + len(kvlens))
    q = rng.standard_normal((len(kvlens), h_q, d)).astype("float32")
    pages, indptr, values, last = _paged_cache(rng, h_kv, d, kvlens)
    sm_scale = 1.0 / np.sqrt(d)
    o1, l1 = _run_decode(ours, q, pages, indptr, values, last, sm_scale)
    o2, l2 = _run_decode(ref, q, pages, indptr, values, last, sm_scale)
    assert np.abs(o1 - o2).max() <= 1e-4
    assert np.abs(l1 - l2).max() <= 1e-4


def test_decode_sliding_window_matches_tvm():
    h_kv, h_q, d = 2, 6, 32
    target = tvm.target.Target(_TARGET)
    ours = tvm.compile(decode_paged_cpu(h_kv, h_q, d, "float32", sliding_window=True), target=target)
    ref = tvm.compile(_attention_decode_cpu(h_kv, h_q, d, "float32", True, {}), target=target)
    rng = np.random.default_rng(5)
    kvlens = [40, 100, 7]
    q = rng.standard_normal((len(kvlens), h_q, d)).astype("float32")
    # (sliding window offset, attention sink size) per sequence
    pages, indptr, values, info = _paged_cache(rng, h_kv, d, kvlens, sliding=([20, 37, 0], [4, 0, 0]))
    o1, l1 = _run_decode(ours, q, pages, indptr, values, info, 0.125)
    o2, l2 = _run_decode(ref, q, pages, indptr, values, info, 0.125)
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
    names = ["batch_prefill_ragged_kv", "batch_decode_paged_kv_cpu", "batch_decode_paged_kv_cpu_sliding_window"]
    before = {name: mod[gvs[name]] for name in names}
    after = replace_cpu_attention_kernels()(mod)
    assert {g.name_hint for g in after.get_global_vars()} == set(gvs)
    for name in names:
        assert not after[gvs[name]].same_as(before[name])
        assert "T.parallel" in after[gvs[name]].script()
        assert after[gvs[name]].attrs["global_symbol"] == before[name].attrs["global_symbol"]


@pytest.mark.parametrize(
    "h_kv,group,d,qlens,kvlens",
    [
        (3, 3, 64, [4, 1, 17], [20, 16, 40]),  # prompt tokens after a cached prefix
        (2, 4, 32, [1, 30, 2], [1, 33, 130]),  # kv_len == qo_len; long prefix
        (1, 2, 32, [3, 5], [0, 9]),  # a sequence without pages
    ],
)
@pytest.mark.parametrize("causal", [0, 1])
def test_paged_prefill_matches_tvm(h_kv, group, d, qlens, kvlens, causal):
    h_q = h_kv * group
    target = tvm.target.Target(_TARGET)
    ours = tvm.compile(prefill_paged_cpu(h_kv, h_q, d, "float32"), target=target)
    ref = tvm.compile(_attention_prefill_cpu(h_kv, h_q, d, "float32", False, {}), target=target)
    rng = np.random.default_rng(h_q * d + len(qlens) + causal)
    q = rng.standard_normal((sum(qlens), h_q, d)).astype("float32")
    qi = np.cumsum([0, *qlens]).astype("int32")
    pages, indptr, values, last = _paged_cache(rng, h_kv, d, kvlens)
    dev = tvm.cpu()
    results = []
    for func in (ours, ref):
        out = tvm.runtime.tensor(np.full(q.shape, 7.0, "float32"), dev)
        lse = tvm.runtime.tensor(np.full(q.shape[:2], 7.0, "float32"), dev)
        rope = (np.zeros(len(qlens), "int32"), np.zeros(len(q), "int32"))
        args = [tvm.runtime.tensor(x, dev) for x in (q, qi, pages, indptr, values, last, *rope)]
        func(*args, out, lse, causal, 0, 1.0, 10000.0, 1.0 / np.sqrt(d))
        results.append((out.numpy(), lse.numpy()))
    (o1, l1), (o2, l2) = results
    assert np.abs(o1 - o2).max() <= 1e-4
    assert np.abs(l1 - l2).max() <= 1e-3


def _bf16(x):
    """x rounded to bfloat16 (nearest even), as float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def _attention_log2(q2, k, v, qlens, kvlens, group):
    """Causal attention in float64 with scores already scaled into log2 space: (output, lse)."""
    out = np.zeros((q2.shape[0], q2.shape[1], v.shape[2]))
    lse = np.zeros(q2.shape[:2])
    q0 = k0 = 0
    for nq, nk in zip(qlens, kvlens):
        for h in range(q2.shape[1]):
            s = q2[q0 : q0 + nq, h].astype(np.float64) @ k[k0 : k0 + nk, h // group].astype(np.float64).T
            s = np.where(np.arange(nk)[None] <= nk - nq + np.arange(nq)[:, None], s, -np.inf)
            m = s.max(1, keepdims=True)
            p = np.exp2(s - m)
            out[q0 : q0 + nq, h] = p @ v[k0 : k0 + nk, h // group] / p.sum(1, keepdims=True)
            lse[q0 : q0 + nq, h] = m[:, 0] + np.log2(p.sum(1))
        q0, k0 = q0 + nq, k0 + nk
    return out, lse


_HOST = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}


@pytest.mark.skipif(not __import__("tvmlm.models.x86_bf16", fromlist=["supported"]).supported(tvm.target.Target(_HOST)),
                    reason="the host CPU has no AVX-512 BF16")
@pytest.mark.parametrize("h_kv,group,d,qlens,kvlens", [
    (3, 3, 64, [5, 1, 17, 40], [5, 9, 17, 70]),
    (2, 4, 32, [300], [300]),
    (1, 7, 32, [3, 30], [10, 30]),  # 3 rows x 7 heads per task is odd: the passes pair query vectors
])
def test_ragged_prefill_bf16_dot_products(h_kv, group, d, qlens, kvlens):
    """The vdpbf16ps kernel computes attention of q, k, v rounded to bfloat16: against float64
    attention of the rounded inputs it differs only by the rounding of p (2**-9 relative)."""
    h_q = h_kv * group
    func = tvm.compile(ragged_prefill_cpu(h_kv, h_q, d, d, "float32", bf16_dot=True), target=tvm.target.Target(_HOST))
    assert "vdpbf16ps" in func.mod.inspect_source("asm")
    rng = np.random.default_rng(7)
    q = (2 * rng.standard_normal((sum(qlens), h_q, d))).astype("float32")  # peaked softmax, as in real models
    k = (2 * rng.standard_normal((sum(kvlens), h_kv, d))).astype("float32")
    v = rng.standard_normal((sum(kvlens), h_kv, d)).astype("float32")
    sm_scale = 1.0 / np.sqrt(d)
    out, lse = _run(func, q, np.cumsum([0, *qlens]).astype("int32"), k, v, np.cumsum([0, *kvlens]).astype("int32"), 1, sm_scale)
    q2 = q * np.float32(sm_scale) * np.float32(np.log2(np.e))
    o_rounded, l_rounded = _attention_log2(_bf16(q2), _bf16(k), _bf16(v), qlens, kvlens, group)
    o_exact, _ = _attention_log2(q2, k, v, qlens, kvlens, group)
    err = np.abs(out - o_rounded)
    assert err.max() <= 1e-2 and err.mean() <= 5e-4, (err.max(), err.mean())
    assert np.abs(lse - l_rounded).max() <= 1e-4
    # not a float32 kernel in disguise: the exact answer is farther away
    assert np.abs(out - o_exact).mean() > 3 * err.mean()
