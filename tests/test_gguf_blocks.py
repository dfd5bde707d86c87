"""GGML block types repacked onto the q4_1 / q8_0 layouts (weights/gguf_blocks.py), against the
`gguf` package's dequantize, and the per-tensor format plan they feed (models/convert.py)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from tvmlm.models.convert import _concat, _planned_format, plan_weight_formats
from tvmlm.models.llama_config import LlamaConfig
from tvmlm.models.packed import PackedWeight
from tvmlm.testing.gguf_model import random_kquant
from tvmlm.weights.gguf_blocks import EXACT, LAYOUT, packed_format, repack

ROWS, COLS = 8, 512
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def _blocks(kind: str, seed: int = 0, scale=(0.001, 0.01)) -> np.ndarray:
    """[ROWS, bytes per row] of `kind`: quantized by gguf where it can, random K-quant blocks with
    sane float16 scales otherwise (gguf cannot quantize K-quants)."""
    rng = np.random.default_rng(seed)
    if kind in K_TYPES:
        return random_kquant((ROWS, COLS), QT[kind], rng, scale)
    return quants.quantize(rng.standard_normal((ROWS, COLS)).astype(np.float32) * 0.05, QT[kind])


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", *K_TYPES])
def test_repacked_equals_gguf_dequantize(kind):
    qtype = QT[kind]
    data = _blocks(kind)
    ref = quants.dequantize(data, qtype).reshape(ROWS, COLS)
    fmt, _ = packed_format(qtype, (ROWS, COLS), data)
    assert fmt == LAYOUT[qtype]
    packed = repack(qtype, data, ROWS, COLS, fmt)
    assert packed.fmt == fmt and packed.shape == (ROWS, COLS)
    got = packed.dequantize()
    err = np.abs(got - ref)
    if qtype in EXACT:
        np.testing.assert_array_equal(got, ref)
    elif qtype == QT.Q4_K:
        # scale d * sc and min dmin * m each rounded to float16: at most 2^-11 of each, times the
        # largest nibble (15) for the scale
        bound = 2.0**-11 * (15 * np.abs(packed.scale.astype(np.float32)) + np.abs(packed.min.astype(np.float32)))
        assert (err <= bound.repeat(32, axis=1) * 1.01 + 1e-7).all()
        assert err.max() > 0  # rounding does happen: the test measures it
    else:
        # requantized to int8 per 32: half a step (max|w| / 254) plus the float16 scale's rounding
        amax = np.abs(ref).reshape(ROWS, -1, 32).max(axis=2).repeat(32, axis=1)
        assert (err <= amax * (1 / 254 + 2.0**-11) * 1.01).all()
        # far below the source's own step: Q2_K..Q6_K quantize to 2..6 bits
        assert err.max() < 0.01 * np.abs(ref).max()


def test_q4_k_scales_beyond_float16_requantize():
    data = _blocks("Q4_K", scale=(2000.0, 3000.0))  # d * 63 > 65504: no float16 q4_1 scale holds it
    fmt, why = packed_format(QT.Q4_K, (ROWS, COLS), data)
    assert fmt == "q8_0" and "float16" in why
    packed = repack(QT.Q4_K, data, ROWS, COLS, fmt)
    ref = quants.dequantize(data, QT.Q4_K).reshape(ROWS, COLS)
    assert np.isfinite(packed.scale).all()
    assert np.abs(packed.dequantize() - ref).max() <= np.abs(ref).max() / 100


def test_requantize_streams_in_bands(monkeypatch):
    from tvmlm.weights import gguf_blocks

    data = _blocks("Q6_K")
    whole = repack(QT.Q6_K, data, ROWS, COLS, "q8_0")
    monkeypatch.setattr(gguf_blocks, "_CHUNK_VALUES", 3 * COLS)  # bands of 3 rows
    banded = repack(QT.Q6_K, data, ROWS, COLS, "q8_0")
    np.testing.assert_array_equal(banded.q, whole.q)
    np.testing.assert_array_equal(banded.scale, whole.scale)


def test_tensors_without_a_packed_layout():
    assert packed_format(QT.F16, (ROWS, COLS))[0] is None
    assert packed_format(QT.Q8_0, (COLS,))[0] is None
    fmt, why = packed_format(QT.Q8_0, (ROWS, 48))
    assert fmt is None and "multiple of the 32-value block" in why


def _cfg(layers: int = 2, tie: bool = False) -> LlamaConfig:
    return LlamaConfig.from_hf({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 128, "tie_word_embeddings": tie,
    })  # fmt: skip


def test_plan_is_per_tensor():
    parts = {"self_attn.q_proj": "q4_1", "self_attn.k_proj": "q4_1", "self_attn.v_proj": "q8_0",
             "self_attn.o_proj": "q8_0", "mlp.gate_proj": "q4_1", "mlp.up_proj": "q4_1", "mlp.down_proj": "q8_0"}  # fmt: skip
    packed = {f"model.layers.{i}.{p}.weight": f for i in range(2) for p, f in parts.items()}
    packed["model.layers.1.mlp.down_proj.weight"] = "q4_1"
    packed["model.embed_tokens.weight"] = "q8_0"
    packed["lm_head.weight"] = "q8_0"
    plan = plan_weight_formats(_cfg(), packed)
    # qkv mixes q4_1 and q8_0: the wider; q8_0 is the most common, the rest listed per tensor
    assert plan == {
        "linear": "q8_0", "embed": "q8_0", "lm_head": "q8_0",
        "model.layers.0.mlp.gate_up_proj.weight": "q4_1",
        "model.layers.1.mlp.gate_up_proj.weight": "q4_1",
        "model.layers.1.mlp.down_proj.weight": "q4_1",
    }  # fmt: skip
    assert _planned_format("model.layers.1.mlp.up_proj.weight", plan) == "q4_1"  # an HF part of gate_up
    assert _planned_format("model.layers.0.self_attn.k_proj.weight", plan) == "q8_0"
    assert _planned_format("model.layers.0.input_layernorm.weight", plan) == "f32"
    # a part stored in float keeps its fused weight float
    del packed["model.layers.0.self_attn.v_proj.weight"]
    assert plan_weight_formats(_cfg(), packed)["model.layers.0.self_attn.qkv_proj.weight"] == "f32"
    # files of one type keep the compact plan
    one = {name: "q4_1" for name in [*packed, "model.layers.0.self_attn.v_proj.weight"]}
    assert plan_weight_formats(_cfg(tie=True), one) == {"linear": "q4_1", "embed": "q4_1", "lm_head": "q4_1"}


def test_fused_parts_in_two_layouts_go_to_the_wider():
    rng = np.random.default_rng(1)
    q = PackedWeight.quantize("q4_1", rng.standard_normal((4, 64)).astype(np.float32))
    v = PackedWeight.quantize("q8_0", rng.standard_normal((2, 64)).astype(np.float32))
    fused = _concat([q, v])
    assert fused.fmt == "q8_0" and fused.shape == (6, 64)
    np.testing.assert_array_equal(fused.dequantize()[4:], v.dequantize())  # the q8_0 part unchanged
    step = np.abs(q.dequantize()).max() / 127
    assert np.abs(fused.dequantize()[:4] - q.dequantize()).max() <= step
