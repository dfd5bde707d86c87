"""Hugging Face model directories: config.json + (sharded) safetensors + tokenizer files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors import safe_open

from .tokenizer_config import normalized_tokenizer_config
from .types import SUPPORTED_ARCHITECTURES, LoadedModel

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
# Tokenizer-side files that change what the packaged tokenizer does.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
)
# Buffers some older checkpoints saved; they are recomputed by the model, not weights.
_SKIP_SUFFIXES = ("rotary_emb.inv_freq",)


def load_hf_dir(path: Path) -> LoadedModel:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{str(path)!r} has no config.json: not a Hugging Face model directory "
            f"(found: {_listing(path)})"
        )
    config = json.loads(config_file.read_text())
    archs = config.get("architectures") or []
    if not archs or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {archs[0] if archs else None!r} in {str(config_file)!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    weight_files = _weight_files(path)
    extra = [str(path / f) for f in _TOKENIZER_FILES if (path / f).is_file()]
    return LoadedModel(
        config=config,
        source_files=[str(config_file), *map(str, weight_files), *extra],
        source_kind="hf",
        path=str(path),
        _iter_tensors=lambda: _iter_tensors(weight_files),
        _write_tokenizer=lambda out: write_tokenizer_dir(path, out),
        stored_dtypes=frozenset(dtype for f in weight_files for dtype in _stored_dtypes(f)),
    )


def _stored_dtypes(file: Path) -> set[str]:
    """The dtypes of a safetensors file's tensors, from its JSON header alone."""
    with open(file, "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names) if names else "nothing"


def _weight_files(path: Path) -> list[Path]:
    index = path / _INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [path / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{str(index)!r} names shard files that are missing: {', '.join(missing)}")
        return files
    if (path / _SINGLE).is_file():
        return [path / _SINGLE]
    hint = ""
    if any(path.glob("*.bin")) or any(path.glob("*.pth")):
        hint = " (PyTorch .bin/.pth checkpoints are not supported; re-save with safetensors)"
    raise ValueError(
        f"{str(path)!r} has no weights: expected {_SINGLE} or {_INDEX} with its shards{hint}; "
        f"found: {_listing(path)}"
    )


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    # File by file, tensor by tensor: only one tensor is in memory at a time.
    for file in files:
        offsets = None
        with safe_open(str(file), framework="numpy") as f:
            for name in f.keys():
                if name.endswith(_SKIP_SUFFIXES):
                    continue
                if f.get_slice(name).get_dtype() == "BF16":
                    # numpy has no bfloat16, so safetensors' numpy backend cannot return it: read the
                    # raw 16-bit words and widen (bf16 is the high half of an f32).
                    if offsets is None:
                        offsets = _safetensors_layout(file)
                    yield name, _read_bf16(file, *offsets[name])
                else:
                    yield name, f.get_tensor(name).astype(np.float32, copy=False)


def _safetensors_layout(file: Path) -> dict[str, tuple[int, list[int]]]:
    """name -> (absolute byte offset, shape), from the file's JSON header (8-byte LE length first)."""
    with open(file, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    base = 8 + n
    return {
        k: (base + v["data_offsets"][0], v["shape"]) for k, v in header.items() if k != "__metadata__"
    }


def _read_bf16(file: Path, offset: int, shape: list[int]) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.fromfile(file, dtype="<u2", count=count, offset=offset)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)


def write_tokenizer_dir(src: Path, out: Path) -> None:
    """Copy tokenizer.json and write a normalized tokenizer_config.json into `out`."""
    tok_json = src / "tokenizer.json"
    if not tok_json.is_file():
        raise ValueError(
            f"{str(src)!r} has no tokenizer.json (only 'fast' tokenizers are supported); "
            f"found: {_listing(src)}"
        )
    if tok_json.resolve() != (out / "tokenizer.json").resolve():
        shutil.copyfile(tok_json, out / "tokenizer.json")
    gen = src / "generation_config.json"
    if gen.is_file() and gen.resolve() != (out / gen.name).resolve():
        shutil.copyfile(gen, out / gen.name)  # carries extra stop ids (eos_token_id lists)
    cfg = normalized_tokenizer_config(src)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
