"""GGUF files (llama.cpp): metadata -> HF config, tensors -> HF names in float32, and the tokenizer
rebuilt from `tokenizer.ggml.*` metadata with the `tokenizers` library."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, TokenType
from gguf.quants import dequantize

from . import gguf_blocks
from .gguf_chat import end_of_turn_ids, fallback_chat_template, special_tokens
from .check_gguf import check_gguf_required
from .gguf_archs import BLOCK_NAMES as _ARCH_BLOCK_NAMES
from .gguf_archs import CONFIG_TENSORS as _CONFIG_TENSORS
from .gguf_archs import HF_ARCH as _HF_ARCH
from .gguf_archs import arch_config, hf_value
from .types import SUPPORTED_GGUF_ARCHITECTURES, LoadedModel

logger = logging.getLogger(__name__)

# Types we dequantize (all through gguf.quants); others fail at load() with a clear message.
SUPPORTED_TENSOR_TYPES = (
    QT.F32, QT.F16, QT.BF16,
    QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
    QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K,
)  # fmt: skip

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_tensor_name(gguf_name: str, arch: str = "llama") -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK_RE.fullmatch(gguf_name)
    names = {**_BLOCK_NAMES, **_ARCH_BLOCK_NAMES.get(arch, {})}
    if m and m.group(2) in names:
        return f"model.layers.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"
    return None


def load_gguf(path: Path) -> LoadedModel:
    reader = GGUFReader(path)
    meta = _Metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r} in {str(path)!r}; "
            f"supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )
    for t in reader.tensors:
        if t.tensor_type not in SUPPORTED_TENSOR_TYPES:
            raise ValueError(
                f"unsupported GGUF quantization type {t.tensor_type.name} (tensor {t.name!r}) in "
                f"{str(path)!r}; supported: {', '.join(q.name for q in SUPPORTED_TENSOR_TYPES)}"
            )
        if hf_tensor_name(t.name, arch) is None and t.name not in _CONFIG_TENSORS:
            raise ValueError(f"unexpected tensor {t.name!r} in {arch} GGUF file {str(path)!r}")

    if (kind := meta.get("tokenizer.ggml.model")) not in TOKENIZER_MODELS:
        raise ValueError(
            f"unsupported GGUF tokenizer model {kind!r} (tokenizer.ggml.model) in {str(path)!r}; "
            f"supported: {', '.join(TOKENIZER_MODELS)}"
        )
    check_gguf_required(path, meta, reader)
    config = _config(meta, reader, arch)
    return LoadedModel(
        config=config,
        source_files=[str(path)],
        source_kind="gguf",
        path=str(path),
        _iter_tensors=lambda keep_packed=None: _iter_tensors(reader, config, arch, keep_packed),
        _write_tokenizer=lambda out: write_tokenizer_dir(meta, config, out),
        packed_formats=_packed_formats(reader, arch),
    )


class _Metadata:
    """Typed access to GGUF key/values (float32 values rounded to their shortest decimal)."""

    def __init__(self, reader: GGUFReader):
        self._fields = reader.fields

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        if field is None:
            return default
        value = field.contents()
        if isinstance(value, float):
            # GGUF stores f32: 1e-5 comes back as 9.99999974e-06; HF configs say 1e-05.
            value = float(str(np.float32(value)))
        return value

    def array_len(self, key: str) -> int | None:
        field = self._fields.get(key)
        return None if field is None else len(field.data)


def _config(meta: _Metadata, reader: GGUFReader, arch: str) -> dict[str, Any]:
    key = lambda name, default=None: meta.get(f"{arch}.{name}", default)  # noqa: E731
    tensors = {t.name: t for t in reader.tensors}
    hidden = key("embedding_length")
    heads = key("attention.head_count")
    kv_heads = key("attention.head_count_kv", heads)
    # The embedding matrix decides the model's vocab size; the token list is normally equally long.
    vocab = int(tensors["token_embd.weight"].shape[-1])
    model_type, hf_arch = _HF_ARCH[arch]
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [hf_arch],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": key("attention.key_length", hidden // heads),
        "hidden_act": "silu",
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": key("rope.freq_base", 10000.0),
        "max_position_embeddings": key("context_length"),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if (n := meta.array_len("tokenizer.ggml.tokens")) is not None and n != vocab:
        config["tokenizer_vocab_size"] = n
    scaling = key("rope.scaling.type")
    if "rope_freqs.weight" in tensors:
        from .gguf_rope import llama3_scaling_from_divisors

        divisors = np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float32)
        rope_scaling = llama3_scaling_from_divisors(
            divisors, config["rope_theta"], key("rope.scaling.original_context_length"))
        if rope_scaling is not None:
            config["rope_scaling"] = rope_scaling
    elif scaling and scaling != "none":
        rope_scaling = {"rope_type": scaling, "factor": key("rope.scaling.factor", 1.0)}
        if (orig := key("rope.scaling.original_context_length")) is not None:
            rope_scaling["original_max_position_embeddings"] = orig
        config["rope_scaling"] = rope_scaling
    if arch == "qwen2":
        config["use_sliding_window"] = False  # llama.cpp does not record it; Qwen2 ships it off
    for k, v in arch_config(arch, key, tensors, config).items():
        if v is not None:
            config[k] = v
    return config


def _unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's converter reorders each head's rows from HF's half-split rope layout to
    # interleaved pairs: w.reshape(n_head, 2, d//2, ...).swapaxes(1, 2). Apply the inverse.
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _numpy_shape(t) -> tuple[int, ...]:
    # GGUF lists dims fastest-first (ne0 = row length); numpy wants them reversed.
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def _packed_formats(reader: GGUFReader, arch: str) -> dict[str, str]:
    """hf_name -> the packed layout (q4_1 / q8_0) each block-quantized 2-D tensor repacks to
    (weights/gguf_blocks.py); a quantized tensor that cannot stay packed is logged with the reason."""
    formats = {}
    for t in reader.tensors:
        name = hf_tensor_name(t.name, arch)
        if name is None or t.tensor_type in (QT.F32, QT.F16, QT.BF16) or len(t.shape) != 2:
            continue
        fmt, why = gguf_blocks.packed_format(t.tensor_type, _numpy_shape(t), t.data)
        if fmt is None:
            logger.warning("GGUF tensor %s (%s) is dequantized to float32: %s", t.name, t.tensor_type.name, why)
        else:
            formats[name] = fmt
    return formats


def _iter_tensors(reader: GGUFReader, config: dict, arch: str, keep_packed=None) -> Iterator[tuple[str, Any]]:
    for t in reader.tensors:
        name = hf_tensor_name(t.name, arch)
        if name is None:  # configuration tensors (_CONFIG_TENSORS), read by _config
            continue
        # Only llama-arch files were permuted (qwen2/qwen3 use HF's rope layout in llama.cpp).
        permuted = arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name)
        heads = config["num_attention_heads"] if ".attn_q." in t.name else config["num_key_value_heads"]
        shape = _numpy_shape(t)
        if keep_packed is not None and t.tensor_type in gguf_blocks.LAYOUT and len(shape) == 2 and keep_packed(name):
            fmt, _ = gguf_blocks.packed_format(t.tensor_type, shape, t.data)
            if fmt is not None:
                w = gguf_blocks.repack(t.tensor_type, t.data, shape[0], shape[1], fmt)
                yield name, w.map_rows(lambda a: np.ascontiguousarray(_unpermute_rope(a, heads))) if permuted else w
                continue
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if permuted:
            w = _unpermute_rope(w, heads)
        w = hf_value(arch, name, w)
        # Copy: the dequantized array may be a read-only view of the memory-mapped file.
        yield name, np.array(w, dtype=np.float32, order="C", copy=True)


# ---------------------------------------------------------------------------------------------
# Tokenizer

# Pre-tokenizer split regexes of llama.cpp's `tokenizer.ggml.pre` types (same as the original HF
# tokenizer.json files of those models).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.model values: byte-level BPE, SentencePiece (weights/gguf_sentencepiece.py)
TOKENIZER_MODELS = ("gpt2", "llama")


def _pre_tokenizer(pre: str | None):
    from tokenizers import Regex, pre_tokenizers as pt

    if pre == "smollm":
        return pt.Sequence(
            [pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    split = {"qwen2": _QWEN2_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT}.get(pre or "")
    if split is not None:
        return pt.Sequence(
            [
                pt.Split(Regex(split), behavior="isolated", invert=False),
                pt.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    # "default"/"gpt2" and anything unknown: GPT-2's own regex inside ByteLevel.
    return pt.ByteLevel(add_prefix_space=False, use_regex=True)


def build_tokenizer(meta: _Metadata):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's byte-level BPE vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind not in TOKENIZER_MODELS:
        raise NotImplementedError(
            f"GGUF tokenizer model {kind!r} (tokenizer.ggml.model) is not supported; supported: "
            + ", ".join(repr(k) for k in TOKENIZER_MODELS)
        )
    tokens: list[str] = meta.get("tokenizer.ggml.tokens")
    if kind == "llama":
        from .gguf_sentencepiece import build_sentencepiece_tokenizer

        tok = build_sentencepiece_tokenizer(meta, meta.get("general.architecture"))
        tok.post_processor = _special_token_processor(meta, tokens)
        return tok

    types: list[int] = meta.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    pre = meta.get("tokenizer.ggml.pre")

    vocab = {tok: i for i, tok in enumerate(tokens)}
    # Llama-3's tokenizer takes a pre-token that is itself in the vocab whole (llama.cpp does too).
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in ("llama-bpe", "llama3"))
    tok = Tokenizer(bpe)
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()  # as in Qwen2's own tokenizer.json
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|>, ...) must match whole in text and be skippable when decoding;
    # user-defined ones (<think>, ...) match whole but stay ordinary text.
    added = [
        AddedToken(t, special=ty == TokenType.CONTROL, normalized=False)
        for t, ty in zip(tokens, types)
        if ty in (TokenType.CONTROL, TokenType.USER_DEFINED)
    ]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])

    steps = [processors.ByteLevel(trim_offsets=False)]
    if (special := _special_token_processor(meta, tokens)) is not None:
        steps.append(special)
    tok.post_processor = processors.Sequence(steps)
    return tok


def add_bos_token(meta: _Metadata) -> bool:
    """Whether the file's tokenizer starts a text with BOS (llama.cpp and transformers add one to a
    SentencePiece vocabulary whose file does not say)."""
    return bool(meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama"))


def _special_token_processor(meta: _Metadata, tokens: list[str]):
    """The TemplateProcessing that adds BOS / EOS where the file asks for them, or None."""
    from tokenizers import processors

    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    eos_id = meta.get("tokenizer.ggml.eos_token_id")
    add_bos = add_bos_token(meta) and bos_id is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos_id is not None
    if not (add_bos or add_eos):
        return None

    def segment(seq: str, type_id: int) -> str:
        parts = [f"{tokens[bos_id]}:{type_id}"] if add_bos else []
        parts.append(f"${seq}:{type_id}")
        return " ".join(parts + ([f"{tokens[eos_id]}:{type_id}"] if add_eos else []))

    specials = {tokens[i]: i for i, on in ((bos_id, add_bos), (eos_id, add_eos)) if on}
    return processors.TemplateProcessing(
        single=segment("A", 0), pair=f"{segment('A', 0)} {segment('B', 1)}", special_tokens=list(specials.items())
    )


def save_tokenizer(tok, path: Path) -> None:
    """Save a `tokenizers.Tokenizer`, BPE merges as "a b" strings where no piece holds a space:
    `tokenizers` parses the [a, b] pairs it writes by default with twice the transient memory
    (Gemma 3's 515k merges: 380 MB peak RSS to load instead of 200)."""
    data = json.loads(tok.to_str())
    model = data.get("model") or {}
    merges = model.get("merges")
    if model.get("type") == "BPE" and merges and all(isinstance(m, list) and " " not in m[0] + m[1] for m in merges):
        model["merges"] = [f"{a} {b}" for a, b in merges]
    path.write_text(json.dumps(data, ensure_ascii=False))


def write_tokenizer_dir(meta: _Metadata, config: dict, out: Path) -> None:
    tok = build_tokenizer(meta)
    save_tokenizer(tok, out / "tokenizer.json")
    tokens = meta.get("tokenizer.ggml.tokens")

    def name(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return None if i is None else tokens[i]

    specials = special_tokens(tokens, meta.get("tokenizer.ggml.token_type"))
    template = meta.get("tokenizer.chat_template")
    if not template and (fallback := fallback_chat_template(specials)) is not None:
        logger.warning("the GGUF has no chat template; using the %s turn format its vocabulary's "
                       "special tokens imply", fallback[0])
        template = fallback[1]
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # lets transformers open the dir as well
        "chat_template": template,
        "bos_token": name("bos_token_id"),
        "eos_token": name("eos_token_id"),
        "unk_token": name("unknown_token_id"),
        "pad_token": name("padding_token_id"),
        "add_bos_token": add_bos_token(meta),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "model_max_length": config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False))
    # llama.cpp also stops on end-of-turn / end-of-message tokens, named in the metadata or not;
    # keep them as extra eos ids.
    eos = [
        i
        for k in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (i := meta.get(f"tokenizer.ggml.{k}")) is not None
    ] + end_of_turn_ids(specials)
    gen = {"bos_token_id": meta.get("tokenizer.ggml.bos_token_id"), "eos_token_id": list(dict.fromkeys(eos))}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
