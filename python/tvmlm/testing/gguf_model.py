"""Tiny GGUF files: a tiny HF model (hf_model.py) converted the way llama.cpp's converter would,
each tensor in the GGML type asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from .archs import GGUF_ARCH, add_arch_extras, convert_tensor, gguf_tensor_name, rope_theta, rotary_dims

_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# Python gguf cannot quantize K-quants; for those we write random blocks with sane fp16 scales
# (byte offset of each fp16 field in a block). The weights are then no longer the HF model's.
_KQUANT_F16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}  # fmt: skip
    if hf_name in top:
        return top[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_BLOCK[rest]}"


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # What llama.cpp's convert_hf_to_gguf.py does to llama q/k rows (interleaved rope layout).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def make_gguf_model(
    hf_dir: str | Path,
    out_path: str | Path,
    tensor_type: str | Callable[[str, tuple], str] = "F32",
    *,
    pre: str = "default",
    seed: int = 0,
    vocab: str = "bpe",
    kquant_scale: tuple[float, float] = (0.001, 0.01),
) -> Path:
    """Convert a tiny HF model dir (from `make_hf_model`) into a GGUF file the way llama.cpp would.

    `tensor_type` is a GGML type name for all 2-D weights, or a function (gguf_name, shape) -> name;
    1-D tensors stay F32. Q2_K..Q6_K tensors get random content (see `_KQUANT_F16_FIELDS`), their
    float16 super-block scales drawn from `kquant_scale`.
    `vocab` "spm" writes a SentencePiece vocabulary of the same size (vocabs.py) instead of
    the HF directory's byte-level BPE.
    """
    import gguf

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    arch = GGUF_ARCH[cfg["model_type"]]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads

    w = gguf.GGUFWriter(str(out_path), arch)
    w.add_name("tiny")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(rotary_dims(cfg, head_dim))
    w.add_rope_freq_base(rope_theta(cfg))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    add_arch_extras(w, cfg, arch, head_dim)
    if vocab == "spm":
        from .vocabs import add_sentencepiece_vocab

        add_sentencepiece_vocab(w, cfg["vocab_size"], "gemma" if arch == "gemma3" else "llama")
    else:
        _add_bpe_vocab(w, hf_dir, cfg, pre)
    _write_tensors(w, hf_dir, arch, cfg, tensor_type, np.random.default_rng(seed), kquant_scale)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path


def _add_bpe_vocab(w, hf_dir: Path, cfg: dict, pre: str) -> None:
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    special = set()
    for a in tok["added_tokens"]:
        vocab[a["content"]] = a["id"]
        if a["special"]:
            special.add(a["id"])
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [3 if i in special else (4 if i >= len(tok["model"]["vocab"]) else 1) for i in range(len(tokens))]
    merges = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(False)
    tpl = tok_cfg.get("chat_template")
    if tpl is None and (hf_dir / "chat_template.jinja").is_file():
        tpl = (hf_dir / "chat_template.jinja").read_text()
    if tpl:
        w.add_chat_template(tpl)


def _write_tensors(w, hf_dir: Path, arch: str, cfg: dict, tensor_type, rng, kquant_scale=(0.001, 0.01)) -> None:
    import gguf
    from safetensors.numpy import load_file

    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    state = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        state.update(load_file(f))
    for hf_name, t in state.items():
        t = t.astype(np.float32)
        if arch in ("llama", "qwen2", "qwen3"):
            name = _gguf_name(hf_name)
        else:
            name = gguf_tensor_name(arch, hf_name, cfg["num_hidden_layers"])
        t = convert_tensor(arch, name, t)
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            t = _llamacpp_permute(t, heads if ".attn_q." in name else kv_heads)
        qname = "F32" if t.ndim == 1 else (tensor_type(name, t.shape) if callable(tensor_type) else tensor_type)
        qtype = gguf.GGMLQuantizationType[qname]
        if qname == "F32":
            w.add_tensor(name, t)
        elif qname in _KQUANT_F16_FIELDS:
            w.add_tensor(name, random_kquant(t.shape, qtype, rng, kquant_scale), raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)


def random_kquant(shape: tuple, qtype, rng, scale: tuple[float, float] = (0.001, 0.01)) -> np.ndarray:
    import gguf

    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    assert cols % block == 0, f"{qtype.name} needs rows of a multiple of {block} values, got {cols}"
    blocks = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    scales = rng.uniform(*scale, size=(rows, cols // block)).astype(np.float16).view(np.uint8)
    for off in _KQUANT_F16_FIELDS[qtype.name]:
        blocks[..., off : off + 2] = scales.reshape(rows, cols // block, 2)
    return blocks.reshape(*shape[:-1], cols // block * nbytes)
