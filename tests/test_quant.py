"""Weights kept packed (q4_1 / q8_0, models/quant.py) against the dequantize-to-f32 path.

Both paths see bit-identical float32 weights (the packed kernels dequantize exactly as the `gguf`
package does), so logits may differ only by summation order and greedy tokens must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from tvmlm import _core
from tvmlm.compile import CompileOptions, prepare_package
from tvmlm.weights import PackedWeight, load

ALL_F32 = CompileOptions(weight_formats=(("embed", "f32"), ("linear", "f32"), ("lm_head", "f32")))


def _greedy_logits(package_dir, prompt, steps):
    model = _core.Model(str(package_dir), "cpu:0", 2)
    model.create_kv_cache(1, 512, 128)
    model.add_sequence(0)
    logits = [model.prefill([0], [prompt])[0]]
    tokens = [int(logits[-1].argmax())]
    for _ in range(steps):
        logits.append(model.decode([0], [tokens[-1]])[0])
        tokens.append(int(logits[-1].argmax()))
    return np.stack(logits), tokens


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory):
    from tiny_models import make_gguf_model

    def make(kind: str):
        # embeddings Q8_0 (as SmolLM2 ships), every linear in `kind`; norms stay F32.
        def types(name, shape):
            return "Q8_0" if name == "token_embd.weight" else kind

        out = tmp_path_factory.mktemp(f"gguf-{kind}") / f"tiny-{kind}.gguf"
        return make_gguf_model(tiny_model_dir("llama"), out, types)

    return make


@pytest.mark.parametrize("kind, linear_format", [("Q4_1", "q4_1"), ("Q4_0", "q4_1"), ("Q8_0", "q8_0")])
def test_packed_matches_dequantized(tiny_gguf, kind, linear_format):
    path = tiny_gguf(kind)
    packed = prepare_package(path, "cpu", progress=False)
    assert packed.metadata["weight_formats"] == {"linear": linear_format, "embed": "q8_0", "lm_head": linear_format}
    dense = prepare_package(path, "cpu", options=ALL_F32, progress=False)
    assert dense.metadata["weight_formats"] == {"linear": "f32", "embed": "f32", "lm_head": "f32"}
    assert packed.metadata["params_bytes"] < dense.metadata["params_bytes"] / 2
    prompt = [5, 17, 300, 42, 9, 100, 250, 7, 3]
    got, got_tokens = _greedy_logits(packed.path, prompt, 24)
    ref, ref_tokens = _greedy_logits(dense.path, prompt, 24)
    assert got_tokens == ref_tokens
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=0)


def test_packed_weights_dequantize_like_gguf(tiny_gguf):
    loaded = load(tiny_gguf("Q4_0"))
    dense = dict(loaded.tensors())
    packed = dict(loaded.tensors(keep_packed=lambda name: True))
    checked = 0
    for name, weight in packed.items():
        if isinstance(weight, PackedWeight):
            np.testing.assert_array_equal(weight.dequantize(), dense[name])
            checked += 1
    assert checked == 2 * 7 + 2  # every linear of both layers, the embedding and the lm_head


def test_smollm2_packed_greedy_matches_f32(smollm2_path):
    packed = prepare_package(smollm2_path, "cpu", progress=False)
    assert packed.metadata["weight_formats"] == {"linear": "q4_1", "embed": "q8_0", "lm_head": "q8_0"}
    dense = prepare_package(smollm2_path, "cpu", options=ALL_F32, progress=False)
    # "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    prompt = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
    got, got_tokens = _greedy_logits(packed.path, prompt, 32)
    ref, ref_tokens = _greedy_logits(dense.path, prompt, 32)
    assert got_tokens == ref_tokens
    assert np.abs(got - ref).max() < 1e-2
