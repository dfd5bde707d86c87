"""Model files checked before any work starts (called by `tvmlm.weights.load`).

    tensors = check_hf_dir(path) | check_gguf_file(path)  # before the format's loader runs
    check_loaded(loaded, tensors)                          # after: the config and tensor shapes

The file checks read headers only (GGUF metadata and tensor infos, safetensors JSON headers, the
small JSON files, tokenizer.json); no tensor data. The config check wants the required fields as
positive integers, heads dividing the hidden size (when no head_dim is given) and kv heads dividing
heads, and every known tensor in the shape the config implies. Every failure is a
`ModelFileError` naming the file, the field, key or tensor, and what was expected.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..errors import ModelFileError
from .check_gguf import GGUFHeader, read_gguf_header
from .check_json import load_tokenizer_json, read_json_file
from .check_safetensors import read_safetensors_header

__all__ = ["check_gguf_file", "check_hf_dir", "check_loaded", "check_tokenizer"]

_INT32_MAX = 2**31 - 1
# Safetensors dtypes an HF checkpoint's weights may have (loaded as float32).
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_SKIP_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some checkpoints carry (hf.py skips them)
_JSON_FILES = ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json")
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def check_tokenizer(loaded: Any) -> None:
    """The tokenizer files `loaded` writes into a package must load (GGUF: the BPE rebuilt from
    metadata; HF: tokenizer.json and the normalized tokenizer_config.json)."""
    import tempfile

    from ..tokenizer import Tokenizer

    with tempfile.TemporaryDirectory(prefix="tvmlm-tokenizer-check-") as tmp:
        try:
            loaded.tokenizer_dir(tmp)
            Tokenizer(tmp)
        except ModelFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - tokenizers/jinja/json raise many kinds
            where = "tokenizer metadata (tokenizer.ggml.*)" if loaded.source_kind == "gguf" else "tokenizer files"
            raise ModelFileError(loaded.path, where, f"do not make a usable tokenizer: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Hugging Face directories


Tensors = dict[str, tuple[tuple[int, ...], Path]]  # tensor name -> (shape, file holding it)


def check_hf_dir(path: Path) -> Tensors:
    """Check an HF directory's JSON, safetensors headers and tokenizer; tensor name -> (shape, file).
    A missing config.json or weights are left to the loader, which lists what it found."""
    if not (path / "config.json").is_file():
        return {}
    read_json_file(path / "config.json")
    for name in _JSON_FILES:
        if (path / name).is_file():
            read_json_file(path / name)
    if (path / "tokenizer.json").is_file():
        load_tokenizer_json(path / "tokenizer.json")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_file(index).get("weight_map")
        if not (isinstance(weight_map, dict) and all(isinstance(v, str) and "/" not in v for v in weight_map.values())):
            raise ModelFileError(index, "weight_map", "is missing or not an object of tensor name -> shard file name")
        files = [path / f for f in sorted(set(weight_map.values())) if (path / f).is_file()]
    else:
        files = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
    shapes: Tensors = {}
    for file in files:
        for name, (dtype, shape) in read_safetensors_header(file).items():
            if name.endswith(_SKIP_SUFFIXES):
                continue
            if dtype not in _FLOAT_DTYPES:
                raise ModelFileError(file, f"tensor {name!r}", f"has dtype {dtype}: expected one of {', '.join(_FLOAT_DTYPES)}")
            if name in shapes:
                raise ModelFileError(file, f"tensor {name!r}", f"is also in {shapes[name][1].name}")
            shapes[name] = (shape, file)
    return shapes


# ---------------------------------------------------------------------------------------------
# GGUF files

# GGUF metadata `_config` (gguf.py) reads, by key suffix after "<arch>.": what each must be.
_GGUF_ARCH_KEYS = {
    "embedding_length": "count", "block_count": "count", "feed_forward_length": "count",
    "attention.head_count": "count", "attention.head_count_kv": "count", "attention.key_length": "count",
    "context_length": "count", "attention.layer_norm_rms_epsilon": "number", "rope.freq_base": "number",
    "rope.scaling.factor": "number", "rope.scaling.original_context_length": "count",
    "rope.scaling.type": "string",
}  # fmt: skip
_TOKENIZER_KEYS = {
    "tokenizer.ggml.model": "string", "tokenizer.ggml.pre": "string", "tokenizer.ggml.tokens": "strings",
    "tokenizer.ggml.token_type": "ints", "tokenizer.ggml.merges": "strings", "tokenizer.chat_template": "string",
    "tokenizer.ggml.add_bos_token": "bool", "tokenizer.ggml.add_eos_token": "bool",
}  # fmt: skip
_TOKEN_ID_KEYS = ("bos", "eos", "unknown", "padding", "eot", "eom")


def check_gguf_file(path: Path) -> Tensors:
    """Check a GGUF file's header and the metadata tvmlm reads; HF tensor name -> (shape, file)."""
    from .gguf import hf_tensor_name

    header = read_gguf_header(path)
    meta = header.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(path, "metadata key 'general.architecture'", f"is {arch!r}: expected a string")
    kinds = {f"{arch}.{k}": kind for k, kind in _GGUF_ARCH_KEYS.items()} | _TOKENIZER_KEYS
    for key, kind in kinds.items():
        if key in meta:
            _check_value(path, f"metadata key {key!r}", meta[key], kind)
    _check_gguf_vocab(path, header)
    return {hf_tensor_name(t.name, arch) or t.name: (t.shape, path) for t in header.tensors}


def _check_gguf_vocab(path: Path, header: GGUFHeader) -> None:
    meta = header.metadata
    tokens = meta.get("tokenizer.ggml.tokens") or []
    types = meta.get("tokenizer.ggml.token_type")
    if types is not None and len(types) != len(tokens):
        raise ModelFileError(
            path, "metadata key 'tokenizer.ggml.token_type'",
            f"has {len(types):,} entries: expected one per token ({len(tokens):,})",
        )
    for name in _TOKEN_ID_KEYS:
        key = f"tokenizer.ggml.{name}_token_id"
        if key in meta:
            _check_value(path, f"metadata key {key!r}", meta[key], "id")
            if meta[key] >= len(tokens):
                raise ModelFileError(path, f"metadata key {key!r}", f"is {meta[key]}: expected a token id < {len(tokens):,}")


def _check_value(path: Path, what: str, value: Any, kind: str) -> None:
    """`kind`: count (int 1..2^31-1), id (int >= 0), number (finite > 0), string, bool, strings, ints."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {
        "count": is_int and 1 <= value <= _INT32_MAX,
        "id": is_int and 0 <= value <= _INT32_MAX,
        "number": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
        "string": isinstance(value, str),
        "bool": isinstance(value, bool),
        "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "ints": isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
    }[kind]
    if not ok:
        expected = {
            "count": f"an integer in [1, {_INT32_MAX}]", "id": "an integer >= 0",
            "number": "a finite number > 0", "string": "a string", "bool": "a boolean",
            "strings": "an array of strings", "ints": "an array of integers",
        }[kind]  # fmt: skip
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ModelFileError(path, what, f"is {shown}: expected {expected}")


# ---------------------------------------------------------------------------------------------
# The config a loader produced, against the tensors the files hold

# HF config field -> GGUF metadata key suffix it was synthesized from (for messages).
_GGUF_FIELDS = {
    "hidden_size": "embedding_length", "num_hidden_layers": "block_count",
    "intermediate_size": "feed_forward_length", "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv", "head_dim": "attention.key_length",
    "max_position_embeddings": "context_length", "rms_norm_eps": "attention.layer_norm_rms_epsilon",
    "rope_theta": "rope.freq_base",
}  # fmt: skip
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_OPTIONAL = {"num_key_value_heads": "count", "head_dim": "count", "max_position_embeddings": "count",
             "rms_norm_eps": "number", "rope_theta": "number", "tie_word_embeddings": "bool",
             "attention_bias": "bool"}  # fmt: skip
# Model types whose full tensor list check_loaded knows (others: shapes of the names it knows).
_KNOWN_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def check_loaded(loaded: Any, tensors: Tensors) -> None:
    """Check `loaded.config` (see the module docstring) and the `tensors`' shapes against it."""
    cfg = loaded.config
    gguf = loaded.source_kind == "gguf"
    source = loaded.path if gguf else str(Path(loaded.path) / "config.json")
    arch = cfg.get("model_type")

    def where(field: str) -> str:
        if gguf and field in _GGUF_FIELDS:
            return f"metadata key '{arch}.{_GGUF_FIELDS[field]}'"
        return f"field {field!r}"

    for field in _REQUIRED:
        if field not in cfg:
            raise ModelFileError(source, where(field), "is missing: expected a positive integer")
        _check_value(Path(source), where(field), cfg[field], "count")
    for field, kind in _OPTIONAL.items():
        if cfg.get(field) is not None:
            _check_value(Path(source), where(field), cfg[field], kind)
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    kv = cfg.get("num_key_value_heads") or heads
    if heads % kv:
        raise ModelFileError(source, where("num_key_value_heads"), f"is {kv}: expected a divisor of the {heads} attention heads")
    if cfg.get("head_dim") is None and hidden % heads:
        raise ModelFileError(
            source, where("num_attention_heads"),
            f"is {heads}: expected a divisor of hidden_size {hidden} (or an explicit head_dim)",
        )
    for field in ("bos_token_id", "eos_token_id"):
        value = cfg.get(field)
        ids = value if isinstance(value, list) else [value]
        if not all(i is None or (isinstance(i, int) and not isinstance(i, bool) and i >= 0) for i in ids):
            raise ModelFileError(source, f"field {field!r}", f"is {value!r}: expected a token id >= 0, a list of them, or null")
    _check_shapes(cfg, tensors, source, "its metadata" if gguf else source)


def expected_shapes(cfg: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """(HF tensor name -> shape the config implies, names that may be absent)."""
    hidden, heads, vocab = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or hidden // heads
    inter = cfg["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    optional = {"lm_head.weight"} if cfg.get("tie_word_embeddings") else set()
    qwen2 = cfg.get("model_type") == "qwen2"
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        layer = {
            "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
            "self_attn.q_proj.weight": (heads * hd, hidden), "self_attn.k_proj.weight": (kv * hd, hidden),
            "self_attn.v_proj.weight": (kv * hd, hidden), "self_attn.o_proj.weight": (hidden, heads * hd),
            "self_attn.q_proj.bias": (heads * hd,), "self_attn.k_proj.bias": (kv * hd,), "self_attn.v_proj.bias": (kv * hd,),
            "self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,),
            "mlp.gate_proj.weight": (inter, hidden), "mlp.up_proj.weight": (inter, hidden), "mlp.down_proj.weight": (hidden, inter),
        }  # fmt: skip
        shapes.update({p + k: v for k, v in layer.items()})
        optional |= {p + k for k in layer if k.endswith(".bias") and not (qwen2 or cfg.get("attention_bias"))}
        if cfg.get("model_type") != "qwen3":
            optional |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
    return shapes, optional


def _check_shapes(cfg: dict[str, Any], tensors: Tensors, source: str, described: str) -> None:
    if not tensors:
        return
    layers = cfg["num_hidden_layers"]
    # Before listing every layer's tensors: a corrupt layer count (e.g. 2**60) must not become a loop.
    held = 1 + max((int(m.group(1)) for name in tensors if (m := _LAYER.match(name))), default=-1)
    if layers > held:
        raise ModelFileError(source, "tensors", f"'model.layers.{held}.*' missing: {described} gives {layers} "
                                                f"layer(s), the weights hold {held}")
    expected, optional = expected_shapes(cfg)
    for name, (shape, file) in tensors.items():
        m = _LAYER.match(name)
        if m and int(m.group(1)) >= layers:
            raise ModelFileError(file, f"tensor {name!r}", f"is for layer {m.group(1)}, but {described} gives {layers} layer(s)")
        if name in expected and tuple(shape) != expected[name]:
            raise ModelFileError(
                file, f"tensor {name!r}",
                f"has shape {list(shape)}: {described} implies {list(expected[name])}",
            )
    if cfg.get("model_type") in _KNOWN_TYPES:
        missing = sorted(set(expected) - set(tensors) - optional)
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ModelFileError(source, "tensors", f"{', '.join(map(repr, missing[:3]))}{more} missing: {described} needs them")
