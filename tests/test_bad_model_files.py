"""Named malformed model files: each gives a `ModelFileError` naming the file, the field or tensor
and what was expected, from the header checks, before any conversion or compilation.

The files are the session's tiny llama (tests/conftest.py) and its GGUF conversion, patched byte by
byte (tests/model_file_patches.py).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from model_file_patches import (
    gguf_kv_offset,
    gguf_tensor_info_offset,
    patch,
    rewrite_safetensors_header,
)

from tvmlm.errors import ModelError, ModelFileError
from tvmlm.testing import make_gguf_model
from tvmlm.weights import load
from tvmlm.weights.check_gguf import read_gguf_header


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return make_gguf_model(tiny_model_dir("llama"), tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def hf_copy(tiny_model_dir, tmp_path) -> Path:
    d = tmp_path / "hf"
    shutil.copytree(tiny_model_dir("llama"), d)
    return d


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _kv_value(key: str):
    """A patch of the value of metadata `key` (just after its type): fn(data) -> offset."""
    return lambda data: gguf_kv_offset(data, key) + 4


def _kv_type(key: str):
    return lambda data: gguf_kv_offset(data, key)


def _tensor_field(name: str, field: str):
    """Offset of a tensor info field: ndims, dim0, type or offset (for a 2-D tensor)."""
    skip = {"ndims": 0, "dim0": 4, "type": 4 + 16, "offset": 4 + 16 + 4}[field]
    return lambda data: gguf_tensor_info_offset(data, name) + skip


# name -> (what to write where, or a function of the file bytes; substrings of the message)
GGUF_CASES = {
    "gguf-cut-short": (lambda d: d[: len(d) // 3], ["truncated", "needs bytes", "the file has"]),
    "gguf-header-only": (lambda d: d[:20], ["header", "truncated", "24 bytes"]),
    "gguf-empty": (lambda d: b"", ["truncated"]),
    "gguf-bad-magic": ((0, b"GGUG"), ["magic", "b'GGUG'", "expected b'GGUF'"]),
    "gguf-version-99": ((4, _u32(99)), ["version", "is 99", "(2, 3)"]),
    "gguf-big-endian": ((4, struct.pack(">I", 3)), ["version", "big-endian"]),
    "gguf-absurd-tensor-count": ((8, _u64(2**60)), ["claims", "tensors", "can hold"]),
    "gguf-absurd-kv-count": ((16, _u64(2**40)), ["metadata entries", "can hold"]),
    "gguf-unknown-value-type": ((_kv_type("llama.block_count"), _u32(77)), ["'llama.block_count'", "unknown value type 77"]),
    "gguf-huge-string": ((_kv_value("general.name"), _u64(2**50)), ["'general.name'", "truncated"]),
    "gguf-huge-array": ((lambda d: gguf_kv_offset(d, "tokenizer.ggml.merges") + 8, _u64(2**55)),
                        ["'tokenizer.ggml.merges'", "array of", "needs at least"]),
    "gguf-invalid-utf8-key": ((lambda d: gguf_kv_offset(d, "general.name") - 4, b"\xff"), ["metadata key #", "UTF-8"]),
    "gguf-zero-heads": ((_kv_value("llama.attention.head_count"), _u32(0)), ["'llama.attention.head_count'", "is 0", "[1,"]),
    "gguf-embedding-length-as-float": ((_kv_type("llama.embedding_length"), _u32(6)), ["'llama.embedding_length'", "expected an integer"]),
    "gguf-kv-heads-not-dividing": ((_kv_value("llama.attention.head_count_kv"), _u32(3)),
                                   ["'llama.attention.head_count_kv'", "is 3", "divisor of the 4"]),
    "gguf-bos-out-of-range": ((_kv_value("tokenizer.ggml.bos_token_id"), _u32(70000)),
                              ["'tokenizer.ggml.bos_token_id'", "70000", "< 611"]),
    "gguf-nan-rms-eps": ((_kv_value("llama.attention.layer_norm_rms_epsilon"), struct.pack("<f", float("nan"))),
                         ["layer_norm_rms_epsilon", "finite number"]),
    "gguf-bad-alignment": (None, ["general.alignment", "power of two"]),  # built below
    "gguf-huge-block-count": ((_kv_value("llama.block_count"), _u32(2**30)),
                              ["'model.layers.2.*' missing", "gives 1073741824 layer(s)", "hold 2"]),
    "gguf-unknown-tensor-type": ((_tensor_field("blk.0.ffn_up.weight", "type"), _u32(99)),
                                 ["'blk.0.ffn_up.weight'", "unknown GGML type 99"]),
    "gguf-five-dims": ((_tensor_field("blk.0.ffn_up.weight", "ndims"), _u32(5)), ["'blk.0.ffn_up.weight'", "5 dimensions"]),
    "gguf-tensor-past-end": ((_tensor_field("output.weight", "offset"), _u64(2**40)),
                             ["'output.weight'", "truncated", "needs bytes"]),
    "gguf-overlapping-tensors": (None, ["overlap"]),  # built below
    "gguf-misaligned-offset": ((_tensor_field("output.weight", "offset"), _u64(8)), ["'output.weight'", "alignment 32"]),
    "gguf-shape-vs-config": ((_tensor_field("blk.1.ffn_down.weight", "dim0"), _u64(64)),
                             ["'model.layers.1.mlp.down_proj.weight'", "has shape", "implies"]),
}


def _gguf_bytes(case: str, path: Path) -> bytes:
    data = path.read_bytes()
    how, _ = GGUF_CASES[case]
    if case == "gguf-bad-alignment":  # general.alignment = 24, added as a uint32 key/value
        key = b"general.alignment"
        count = struct.unpack_from("<Q", data, 16)[0]
        return data[:16] + _u64(count + 1) + _u64(len(key)) + key + _u32(4) + _u32(24) + data[24:]
    if case == "gguf-overlapping-tensors":  # the second tensor in the file placed at the first's offset
        second = sorted(read_gguf_header(path).tensors, key=lambda t: t.start)[1].name
        return patch(data, _tensor_field(second, "offset")(data), _u64(0))
    if callable(how):
        return how(data)
    where, value = how
    return patch(data, where(data) if callable(where) else where, value)


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_bad_gguf(case, tiny_gguf, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(_gguf_bytes(case, tiny_gguf))
    with pytest.raises(ModelFileError) as info:
        load(bad)
    assert info.value.file == str(bad)
    for part in GGUF_CASES[case][1]:
        assert part in str(info.value), (part, str(info.value))


def test_gguf_truncation_message_names_tensor_and_byte_range(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: len(data) - 10_000])
    with pytest.raises(ModelFileError, match=r"tensor '[\w.]+' truncated: needs bytes [\d,]+-[\d,]+, the file has [\d,]+$"):
        load(bad)


# ---------------------------------------------------------------------------------------------
# Hugging Face directories


def _set_config(**fields):
    def mutate(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        for k, v in fields.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (d / "config.json").write_text(json.dumps(cfg))

    return mutate


def _st_header(fn):
    return lambda d: rewrite_safetensors_header(d / "model.safetensors", fn)


def _write(name: str, content: bytes):
    return lambda d: (d / name).write_bytes(content)


def _truncate(name: str, size: int):
    return lambda d: (d / name).write_bytes((d / name).read_bytes()[:size])


def _set_entry(tensor: str, **fields):
    def fn(header: dict) -> None:
        header[tensor].update(fields)

    return fn


HF_CASES = {
    "safetensors-cut-to-1000-bytes": (_truncate("model.safetensors", 1000), "model.safetensors", ["header length", "truncated"]),
    "safetensors-cut-in-data": (_truncate("model.safetensors", 300_000), "model.safetensors", ["data", "truncated"]),
    "safetensors-trailing-bytes": (lambda d: open(d / "model.safetensors", "ab").write(b"\0" * 64), "model.safetensors", ["trailing bytes"]),
    "safetensors-header-not-json": (lambda d: patch_file(d / "model.safetensors", 8, b"{nope"), "model.safetensors", ["not a valid JSON"]),
    "safetensors-unknown-dtype": (_st_header(_set_entry("model.norm.weight", dtype="F7")), "model.safetensors", ["'model.norm.weight'", "dtype 'F7'"]),
    "safetensors-int-weights": (_st_header(_set_entry("model.norm.weight", dtype="I32")), "model.safetensors", ["'model.norm.weight'", "dtype I32", "F32"]),
    "safetensors-bad-offsets": (_st_header(_set_entry("model.norm.weight", data_offsets=[0, 4])), "model.safetensors", ["'model.norm.weight'", "data_offsets"]),
    "safetensors-negative-shape": (_st_header(_set_entry("model.norm.weight", shape=[-64])), "model.safetensors", ["'model.norm.weight'", "shape"]),
    "safetensors-shape-vs-config": (_st_header(_set_entry("model.norm.weight", shape=[8, 8])), "model.safetensors", ["'model.norm.weight'", "[8, 8]", "implies [64]"]),
    "safetensors-missing-tensor": (lambda d: _drop_tensor(d / "model.safetensors", "model.layers.1.mlp.down_proj.weight"), "config.json", ["down_proj", "missing"]),
    "config-not-json": (_write("config.json", b"{'hidden_size': 64"), "config.json", ["not valid JSON"]),
    "config-a-list": (_write("config.json", b"[1, 2]"), "config.json", ["JSON array, expected a JSON object"]),
    "config-heads-not-dividing-hidden": (_set_config(num_attention_heads=5, num_key_value_heads=5, head_dim=None), "config.json", ["num_attention_heads", "divisor of hidden_size 64"]),
    "config-kv-heads-not-dividing": (_set_config(num_key_value_heads=3), "config.json", ["num_key_value_heads", "divisor of the 4"]),
    "config-negative-hidden": (_set_config(hidden_size=-64), "config.json", ["hidden_size", "is -64"]),
    "config-hidden-as-string": (_set_config(hidden_size="64"), "config.json", ["hidden_size", "'64'"]),
    "config-missing-vocab": (_set_config(vocab_size=None), "config.json", ["vocab_size", "missing"]),
    "config-fewer-layers": (_set_config(num_hidden_layers=1), "model.safetensors", ["model.layers.1.", "layer 1", "gives 1 layer(s)"]),
    "config-more-layers": (_set_config(num_hidden_layers=10**9), "config.json", ["'model.layers.2.*' missing", "gives 1000000000 layer(s)"]),
    "config-nan-eps": (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": NaN')), "config.json", ["rms_norm_eps", "finite"]),
    "tokenizer-json-not-json": (_write("tokenizer.json", b"not json"), "tokenizer.json", ["not a tokenizers file"]),
    "tokenizer-json-a-list": (_write("tokenizer.json", b"[1, 2, 3]"), "tokenizer.json", ["not a tokenizers file", "expected struct Tokenizer"]),
    "tokenizer-config-not-json": (_write("tokenizer_config.json", b"{"), "tokenizer_config.json", ["not valid JSON"]),
    "index-without-weight-map": (_write("model.safetensors.index.json", b"{}"), "model.safetensors.index.json", ["weight_map"]),
}


def _drop_tensor(path: Path, name: str) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    del tensors[name]
    save_file(tensors, str(path))


def patch_file(path: Path, offset: int, value: bytes) -> None:
    path.write_bytes(patch(path.read_bytes(), offset, value))


@pytest.mark.parametrize("case", list(HF_CASES))
def test_bad_hf_dir(case, hf_copy):
    mutate, file, parts = HF_CASES[case]
    mutate(hf_copy)
    with pytest.raises(ModelFileError) as info:
        load(hf_copy)
    assert info.value.file == str(hf_copy / file)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


def test_errors_keep_builtin_bases(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent")
    with pytest.raises(ValueError):
        load(tmp_path)  # a directory without config.json
    assert issubclass(ModelFileError, ModelError) and issubclass(ModelFileError, ValueError)


def test_checks_read_headers_only(tiny_gguf, hf_copy, monkeypatch):
    """The checks never read tensor data: with every tensor's bytes zeroed they pass the same."""
    from tvmlm.weights.checks import check_gguf_file, check_hf_dir

    header = read_gguf_header(tiny_gguf)
    data = bytearray(tiny_gguf.read_bytes())
    data[header.data_start :] = bytes(len(data) - header.data_start)
    zeroed = hf_copy / "zeroed.gguf"
    zeroed.write_bytes(bytes(data))
    assert {k: v[0] for k, v in check_gguf_file(zeroed).items()} == {k: v[0] for k, v in check_gguf_file(tiny_gguf).items()}
    assert check_hf_dir(hf_copy)
