"""Memory: weights used in place from the mapped params file, a KV cache that is not resident until
used, weight conversion that holds one tensor at a time (docs/architecture.md, "Memory")."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest


def _rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def test_params_file_is_aligned_valid_safetensors_written_in_any_order(tmp_path):
    from safetensors.numpy import load_file

    from tvmlm.models.params_file import ALIGNMENT, ParamsWriter

    arrays = {
        "a": np.arange(7, dtype=np.float32),  # 28 bytes: the next tensor needs a pad
        "b": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "c": np.linspace(0, 1, 33).astype(np.float16),
    }
    path = tmp_path / "params.safetensors"
    specs = [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()]
    with ParamsWriter(path, specs) as w:
        for name in ("c", "a", "b"):
            w.write(name, arrays[name])
        assert w.missing() == []
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert (8 + header_len) % ALIGNMENT == 0
    assert all(header[k]["data_offsets"][0] % ALIGNMENT == 0 for k in arrays)
    assert any(k.startswith("__pad__.") for k in header)
    loaded = load_file(str(path))  # the reference reader accepts it (no holes)
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v)
    with ParamsWriter(tmp_path / "p2.safetensors", specs) as w:
        with pytest.raises(ValueError, match="shape"):
            w.write("a", np.zeros(8, np.float32))
        with pytest.raises(ValueError, match="no place"):
            w.write("zzz", np.zeros(8, np.float32))
        assert w.missing() == ["a", "b", "c"]


def test_weights_are_mapped_from_the_package_not_copied(tiny_package):
    from tvmlm import _core

    pkg = tiny_package("llama")
    model = _core.Model(str(pkg.path), "cpu:0", 1)
    params = str((pkg.path / "params.safetensors").resolve())
    with open("/proc/self/maps") as f:
        assert any(line.rstrip().endswith(params) for line in f), "params.safetensors is not mapped"
    model.create_kv_cache(1, 64, 16)
    model.add_sequence(0)
    assert model.prefill([0], [[5, 6, 7]])[0].shape[-1] > 0  # the mapped weights serve a forward pass
    del model


def test_kv_cache_is_not_resident_until_used(tiny_package):
    from tvmlm import _core

    pkg = tiny_package("llama")
    meta = json.loads((pkg.path / "metadata.json").read_text())
    per_token = 2 * meta["num_hidden_layers"] * meta["num_key_value_heads"] * meta["head_dim"] * 4
    tokens = (256 << 20) // per_token // 16 * 16  # a 256 MB cache
    model = _core.Model(str(pkg.path), "cpu:0", 1)
    before = _rss_kb()
    model.create_kv_cache(1, tokens, 16)
    grown_mb = (_rss_kb() - before) / 1024
    assert grown_mb < 32, f"creating a 256 MB KV cache made {grown_mb:.0f} MB resident"
    del model


def test_weight_conversion_holds_one_tensor_at_a_time(tmp_path):
    """convert_params' peak Python-heap memory stays near a few tensors, not the whole model."""
    from tvmlm.models.convert import convert_hf_tensors, convert_params
    from tvmlm.models.llama_config import LlamaConfig

    layers, hidden, inter, vocab = 8, 128, 256, 1024
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
              "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (hidden // 2, hidden),
                       p + "self_attn.v_proj.weight": (hidden // 2, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})

    def tensors(keep_packed=None):
        for name, shape in shapes.items():
            yield name, np.full(shape, 0.5, np.float32)

    class Loaded:
        def __init__(self):
            self.config = config

        def tensors(self, keep_packed=None):
            return tensors()

    cfg = LlamaConfig.from_hf(config)
    params = [{"name": n, "dtype": "float32", "shape": list(a.shape)} for n, a in convert_hf_tensors(cfg, tensors())]
    total = sum(4 * int(np.prod(p["shape"])) for p in params)
    largest = max(4 * int(np.prod(p["shape"])) for p in params)
    tracemalloc.start()
    try:
        convert_params(Loaded(), {"params": params}, tmp_path / "params.safetensors", progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * largest < total / 2, (peak, largest, total)
    assert (tmp_path / "params.safetensors").stat().st_size >= total
