"""tvmlm.weights: HF directories and GGUF files -> HF-named float32 tensors, config, tokenizer files.

References are independent implementations: transformers' own loaders (safetensors, and its GGUF
dequantizer + rope un-permutation) and the original HF weights a tiny GGUF was converted from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tvmlm.testing import EOS_ID, make_gguf_model, make_hf_model, smollm2_gguf_path
from tvmlm.weights import SUPPORTED_ARCHITECTURES, load


def _state_dict(model_dir: Path, **kwargs) -> dict[str, np.ndarray]:
    import transformers as tf

    tf.logging.set_verbosity_error()
    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


def _expected_names(ref: dict, config: dict) -> set[str]:
    # transformers lists the tied lm_head in state_dict; the files (and our loader) do not.
    names = set(ref)
    if config.get("tie_word_embeddings"):
        names.discard("lm_head.weight")
    return names


# ---------------------------------------------------------------------------------------------
# HF directories

HF_CASES = {
    "llama": dict(arch="llama"),
    "llama-tied": dict(arch="llama", tie=True),
    "llama-sharded": dict(arch="llama", max_shard_size="60KB"),
    "llama-bf16": dict(arch="llama", dtype="bfloat16"),
    "qwen2": dict(arch="qwen2"),
    "qwen2-bf16-sharded": dict(arch="qwen2", dtype="bfloat16", max_shard_size="40KB"),
    "qwen3": dict(arch="qwen3"),
    "mistral": dict(arch="mistral"),
}


@pytest.fixture(scope="module", params=list(HF_CASES))
def hf_case(request, tmp_path_factory):
    kw = dict(HF_CASES[request.param])
    d = make_hf_model(kw.pop("arch"), tmp_path_factory.mktemp(request.param), **kw)
    return request.param, d


def test_hf_tensors_equal_transformers(hf_case):
    case, d = hf_case
    m = load(d)
    assert m.source_kind == "hf"
    assert m.config == json.loads((d / "config.json").read_text())
    ref = _state_dict(d)
    got = {}
    for name, arr in m.tensors():
        assert name not in got, f"{name} yielded twice"
        assert arr.dtype == np.float32
        got[name] = arr
    assert set(got) == _expected_names(ref, m.config)
    for name, arr in got.items():
        np.testing.assert_array_equal(arr, ref[name], err_msg=name)
    weight_files = [f for f in m.source_files if f.endswith(".safetensors")]
    if "sharded" in case:
        assert len(weight_files) > 1 and (d / "model.safetensors.index.json").is_file()
    assert sorted(weight_files) == sorted(str(f) for f in d.glob("*.safetensors"))


def test_hf_bf16_widening_is_exact(tmp_path):
    # bf16 values are the high halves of f32 values: check against torch's own conversion.
    import torch

    d = make_hf_model("llama", tmp_path, dtype="bfloat16", layers=1)
    from safetensors.torch import load_file

    ref = load_file(d / "model.safetensors")
    for name, arr in load(d).tensors():
        assert ref[name].dtype == torch.bfloat16
        np.testing.assert_array_equal(arr, ref[name].float().numpy(), err_msg=name)


def test_hf_16bit_weights_are_kept_or_not_widened_silently(tmp_path):
    """16-bit checkpoints: the loader reports what the files store (from the headers alone); one
    16-bit dtype is kept as stored, and a mix of bfloat16 and float16 (widened to float32) says so
    and how to pack the weights instead."""
    import dataclasses

    from tvmlm.compile import CompileOptions, widening_note
    from tvmlm.models.convert import half_formats

    for dtype, stored, fmt in (("bfloat16", "BF16", "bf16"), ("float16", "F16", "f16"), ("float32", "F32", None)):
        loaded = load(make_hf_model("llama", tmp_path / dtype, dtype=dtype, layers=1))
        assert loaded.stored_dtypes == {stored}
        assert half_formats(loaded.stored_dtypes) == (None if fmt is None else {"linear": fmt, "embed": fmt, "lm_head": fmt})
        assert widening_note(loaded, CompileOptions()) is None
    mixed = dataclasses.replace(loaded, stored_dtypes=frozenset({"BF16", "F16"}))
    assert half_formats(mixed.stored_dtypes) is None
    note = widening_note(mixed, CompileOptions())
    assert "BF16/F16" in note and "widened to float32" in note and "quantization='q8_0'" in note
    assert widening_note(mixed, CompileOptions(quantization="q8_0")) is None


def test_hf_tokenizer_dir(tmp_path):
    src = make_hf_model("qwen2", tmp_path / "src", layers=1)
    out = load(src).tokenizer_dir(tmp_path / "out")
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    # transformers 5 keeps the template in chat_template.jinja: it must be merged into the config.
    assert cfg["chat_template"] == (src / "chat_template.jinja").read_text()
    assert (cfg["bos_token"], cfg["eos_token"], cfg["add_bos_token"]) == ("<|im_start|>", "<|im_end|>", False)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == EOS_ID


# ---------------------------------------------------------------------------------------------
# GGUF files converted from tiny HF models


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """HF dirs reused by the GGUF tests. Only llama/qwen2 (head_dim = hidden/heads) are compared
    with transformers' GGUF loader: it ignores an explicit head_dim (`attention.key_length`)."""
    made = {}

    def get(arch: str, **kw) -> Path:
        key = (arch, tuple(sorted(kw.items())))
        if key not in made:
            made[key] = make_hf_model(arch, tmp_path_factory.mktemp(arch), **kw)
        return made[key]

    return get


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0"])
def test_gguf_tensors_equal_transformers(tiny_dirs, tmp_path, arch, qtype):
    hf = tiny_dirs(arch)
    gguf_file = make_gguf_model(hf, tmp_path / "m.gguf", qtype)
    m = load(gguf_file)
    got = dict(m.tensors())
    ref = _state_dict(tmp_path, gguf_file="m.gguf")  # transformers reads all from the file
    assert set(got) == _expected_names(ref, m.config)
    for name, arr in got.items():
        np.testing.assert_allclose(arr, ref[name], rtol=0, atol=1e-6, err_msg=name)
    # And against the original weights: exact for F32, within the format's rounding otherwise.
    orig = _state_dict(hf)
    tol = {"F32": 0, "F16": 2e-3, "BF16": 2e-2, "Q8_0": 1e-2}.get(qtype, 0.1)
    for name, arr in got.items():
        np.testing.assert_allclose(arr, orig[name], rtol=0, atol=tol, err_msg=name)


def test_gguf_kquants_equal_transformers(tiny_dirs, tmp_path):
    # K-quants work on 256-value blocks, so rows must be 256 wide.
    hf = tiny_dirs("llama", hidden_size=256, intermediate_size=256, layers=1)
    kinds = {"token_embd": "Q6_K", "attn_q": "Q4_K", "attn_k": "Q5_K", "attn_v": "Q6_K",
             "attn_output": "Q5_1", "ffn_gate": "Q4_K", "ffn_up": "Q5_K", "ffn_down": "Q8_0",
             "output": "Q6_K"}  # fmt: skip
    pick = lambda name, shape: kinds[name.split(".")[-2]]  # noqa: E731
    make_gguf_model(hf, tmp_path / "k.gguf", pick)
    got = dict(load(tmp_path / "k.gguf").tensors())
    ref = _state_dict(tmp_path, gguf_file="k.gguf")
    assert set(got) == set(ref)
    for name, arr in got.items():
        assert np.abs(arr).max() > 0, name
        np.testing.assert_allclose(arr, ref[name], rtol=0, atol=1e-6, err_msg=name)


CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
               "bos_token_id", "eos_token_id")  # fmt: skip


@pytest.mark.parametrize(
    "arch,kw,hf_arch",
    [
        ("llama", dict(tie=True), "LlamaForCausalLM"),
        ("qwen2", dict(), "Qwen2ForCausalLM"),
        # explicit head_dim (2 * hidden / heads): checks head_dim and the rope un-permutation with it
        ("qwen3", dict(), "Qwen3ForCausalLM"),
        ("mistral", dict(rope_theta=50000.0), "LlamaForCausalLM"),  # llama.cpp stores mistral as llama
    ],
)
def test_gguf_config_and_f32_roundtrip(tiny_dirs, tmp_path, arch, kw, hf_arch):
    hf = tiny_dirs(arch, **kw)
    m = load(make_gguf_model(hf, tmp_path / "m.gguf", "F32"))
    hf_cfg = json.loads((hf / "config.json").read_text())
    assert m.source_kind == "gguf" and m.source_files == [str(tmp_path / "m.gguf")]
    assert m.config["architectures"] == [hf_arch]
    for key in CONFIG_KEYS:
        assert m.config[key] == hf_cfg[key], key
    head_dim = hf_cfg.get("head_dim") or hf_cfg["hidden_size"] // hf_cfg["num_attention_heads"]
    assert m.config["head_dim"] == head_dim
    assert m.config["rope_theta"] == hf_cfg["rope_parameters"]["rope_theta"]
    assert m.config["attention_bias"] == (arch == "qwen2")
    orig = _state_dict(hf)
    got = dict(m.tensors())
    assert set(got) == _expected_names(orig, hf_cfg)
    for name, arr in got.items():
        np.testing.assert_array_equal(arr, orig[name], err_msg=name)


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct Q4_1 (the default model)


@pytest.fixture(scope="module")
def smollm2():
    return load(smollm2_gguf_path())


def test_smollm2_config(smollm2):
    c = smollm2.config
    expected = dict(model_type="llama", architectures=["LlamaForCausalLM"], num_hidden_layers=30, hidden_size=576,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536,
                    rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192, vocab_size=49152,
                    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, attention_bias=False)  # fmt: skip
    assert {k: c.get(k) for k in expected} == expected
    assert "rope_scaling" not in c


def test_smollm2_tensors_equal_transformers(smollm2):
    # transformers dequantizes the whole file (~50 s here): the one heavy reference in this file.
    p = smollm2_gguf_path()
    ref = _state_dict(p.parent, gguf_file=p.name)
    seen = set()
    for name, arr in smollm2.tensors():
        assert arr.dtype == np.float32 and arr.shape == ref[name].shape, name
        np.testing.assert_allclose(arr, ref[name], rtol=0, atol=1e-6, err_msg=name)
        seen.add(name)
    assert seen == _expected_names(ref, smollm2.config)
    assert len(seen) == 2 + 30 * 9  # embed + final norm + 9 per layer, no lm_head (tied)


# ---------------------------------------------------------------------------------------------
# Errors


def _write_gguf(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, str]], **kv):
    """A minimal GGUF: `general.architecture`, string/int metadata, raw tensors of any type."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for k, v in kv.items():
        (w.add_string if isinstance(v, str) else w.add_uint32)(k, v)
    for name, (data, qname) in tensors.items():
        qtype = gguf.GGMLQuantizationType[qname]
        w.add_tensor(name, data, raw_dtype=None if qname == "F32" else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_error_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope")


def test_error_not_a_gguf_file(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=r"not a \.gguf file"):
        load(tmp_path / "model.bin")


def test_error_dir_without_config(tmp_path):
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(ValueError, match=r"no config\.json.*readme\.md"):
        load(tmp_path)


def test_error_dir_without_weights(tmp_path):
    d = make_hf_model("llama", tmp_path, layers=1)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no weights") as e:
        load(d)
    # lists what it found and says why the .bin is not used
    assert "config.json" in str(e.value) and "tokenizer.json" in str(e.value)
    assert ".bin" in str(e.value) and "not supported" in str(e.value)


def test_error_missing_shard(tmp_path):
    d = make_hf_model("llama", tmp_path, max_shard_size="60KB")
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ValueError, match=f"missing: {shard.name}"):
        load(d)


def test_error_unsupported_hf_architecture(tmp_path):
    d = make_hf_model("llama", tmp_path, layers=1)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as e:
        load(d)
    assert all(a in str(e.value) for a in SUPPORTED_ARCHITECTURES)


def test_error_unsupported_gguf_architecture(tmp_path):
    embed = np.zeros((4, 32), np.float32)
    p = _write_gguf(tmp_path / "gpt2.gguf", "gpt2", {"token_embd.weight": (embed, "F32")})
    with pytest.raises(ValueError, match=r"unsupported GGUF architecture 'gpt2'.*llama, qwen2, qwen3, gemma3, phi3"):
        load(p)


def test_every_gguf_architecture_maps_to_a_supported_hf_one():
    """One table per fact: the model definition's architectures, the GGUF names mapped onto them."""
    from tvmlm.models.llama_config import SUPPORTED_ARCHITECTURES as MODEL_ARCHITECTURES
    from tvmlm.weights.gguf_archs import HF_ARCH

    assert SUPPORTED_ARCHITECTURES == tuple(MODEL_ARCHITECTURES)
    assert {hf_arch for _, hf_arch in HF_ARCH.values()} <= set(SUPPORTED_ARCHITECTURES)


def test_error_unsupported_gguf_quant_type(tmp_path):
    import gguf

    nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ4_NL][1]
    raw = np.zeros((4, nbytes), np.uint8)  # one 32-value block per row
    p = _write_gguf(tmp_path / "iq.gguf", "llama", {"token_embd.weight": (raw, "IQ4_NL")})
    with pytest.raises(ValueError, match=r"unsupported GGUF quantization type IQ4_NL.*token_embd.*Q4_K"):
        load(p)


@pytest.mark.parametrize("scaling, theta, head_dim", [
    ({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 500000.0, 128),  # Llama 3.1
    ({"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 500000.0, 64),  # Llama 3.2 1B
    ({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}, 10000.0, 32),
    ({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}, 10000.0, 16),  # tiny llama
])
def test_gguf_rope_freqs_give_back_the_llama3_scaling(scaling, theta, head_dim):
    """rope_freqs.weight as llama.cpp writes it (float32) -> the HF rope_scaling it came from."""
    from tvmlm.testing.archs import llama3_rope_freqs

    from tvmlm.weights.gguf_rope import llama3_scaling_from_divisors

    divisors = llama3_rope_freqs(scaling, theta, head_dim)
    assert llama3_scaling_from_divisors(divisors, theta, None) == {"rope_type": "llama3", **scaling}
    assert llama3_scaling_from_divisors(np.ones(head_dim // 2, np.float32), theta, None) is None
    with pytest.raises(ValueError, match="no llama3 rope scaling reproduces"):
        llama3_scaling_from_divisors(divisors[::-1].copy(), theta, None)
