"""HF tensors -> the package's params.safetensors (no tvm import: runs on the warm path too)."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .llama_config import LlamaConfig
from .packed import QUANTIZATIONS, PackedWeight


# Float weights kept as a checkpoint stores them (models/half.py), not packed and not widened.
HALF_FORMATS = ("bf16", "f16")

LINEAR_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# The module's fused linears and the HF weights each is made of (convert_hf_tensors).
FUSED_LINEARS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
_FUSED_OF = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
# Of two packed layouts in one fused weight, the parts of the narrower are requantized to the wider.
_WIDTH = {"q4_1": 0, "q8_0": 1}


def plan_weight_formats(cfg: LlamaConfig, packed_formats: dict[str, str], dtype: str = "float32") -> dict[str, str]:
    """Which weights stay packed, tensor by tensor: {"linear", "embed", "lm_head"} -> "f32" | "q4_1"
    | "q8_0", plus "model.layers.<i>.<fused linear>.weight" -> format for each decoder linear whose
    format is not the "linear" one (the most common).

    A fused linear (qkv, gate_up) is packed when all its parts are, in the widest of their
    layouts (q8_0 over q4_1); a part stored in float keeps the whole fused weight float. Packed
    weights need float32 activations.
    """
    if dtype != "float32":
        return {"linear": "f32", "embed": "f32", "lm_head": "f32"}
    per_linear = {}
    for i in range(cfg.num_hidden_layers):
        for fused, parts in FUSED_LINEARS.items():
            name = f"model.layers.{i}.{fused}.weight"
            if name in packed_formats:  # stored fused (Phi-3's GGUF attn_qkv, ffn_up)
                fmts = [packed_formats[name]]
            else:
                fmts = [packed_formats.get(f"model.layers.{i}.{part}.weight", "f32") for part in parts]
            per_linear[name] = "f32" if "f32" in fmts else max(fmts, key=_WIDTH.__getitem__)
    counts = collections.Counter(per_linear.values())
    linear = max(counts, key=lambda f: (counts[f], f)) if counts else "f32"  # ties: a fixed choice
    embed = packed_formats.get("model.embed_tokens.weight", "f32")
    lm_head = embed if cfg.tie_word_embeddings else packed_formats.get("lm_head.weight", "f32")
    plan = {"linear": linear, "embed": embed, "lm_head": lm_head}
    plan.update({name: fmt for name, fmt in per_linear.items() if fmt != linear})
    return plan


def quantization_formats(cfg: LlamaConfig, quantization: str, dtype: str = "float32") -> dict[str, str]:
    """Weight formats for EngineConfig.quantization: "q4_1" packs the linears in 4 bits and the
    embeddings (and a tied lm_head) in q8_0, as llama.cpp's Q4 files do; "q8_0" packs all in 8 bits."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}; expected one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return {"linear": "f32", "embed": "f32", "lm_head": "f32"}
    if dtype != "float32":
        raise ValueError(f"quantization={quantization!r} needs float32 activations, not dtype={dtype!r}")
    return {"linear": quantization, "embed": "q8_0", "lm_head": "q8_0" if cfg.tie_word_embeddings else quantization}


def _planned_format(name: str, formats: dict[str, str]) -> str:
    """The planned format of a weight, by its HF name or its converted (fused qkv / gate_up) name."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in _FUSED_OF:  # an HF part: its fused weight's format
        name = ".".join(parts[:-2] + [_FUSED_OF[parts[-2]], parts[-1]])
    if name in formats:  # a per-tensor entry
        return formats[name]
    if name == "model.embed_tokens.weight":
        return formats.get("embed", "f32")
    if name == "lm_head.weight":
        return formats.get("lm_head", "f32")
    if name.endswith(".weight") and name.split(".")[-2] in LINEAR_PARTS + ("qkv_proj", "gate_up_proj"):
        return formats.get("linear", "f32")
    return "f32"


def keep_packed_predicate(formats: dict[str, str]):
    """`keep_packed(hf_name)` for LoadedModel.tensors() that matches a weight-format plan."""
    return lambda name: _planned_format(name, formats) != "f32"


def _concat(parts: list) -> Any:
    """Row-concatenate dense arrays or packed weights (a fused projection); packed parts in two
    layouts all go to the wider one (a Q4_K q_proj beside a Q6_K v_proj: q8_0)."""
    if all(isinstance(p, PackedWeight) for p in parts):
        fmt = max((p.fmt for p in parts), key=_WIDTH.__getitem__)
        parts = [p if p.fmt == fmt else PackedWeight.quantize(fmt, p.dequantize()) for p in parts]
        mins = None if parts[0].min is None else np.concatenate([p.min for p in parts])
        return PackedWeight(fmt, np.concatenate([p.q for p in parts]), np.concatenate([p.scale for p in parts]), mins)
    return np.concatenate([p.dequantize() if isinstance(p, PackedWeight) else p for p in parts], axis=0)


def convert_hf_tensors(cfg: LlamaConfig, tensors: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """Map Hugging Face parameter names onto this module's (fused qkv and gate_up) names.

    Consumes `(hf_name, array)` pairs one at a time, holding back only the pieces of a fused
    weight until all of its parts have arrived, so peak memory stays near one layer.
    """
    pending: dict[str, dict[str, np.ndarray]] = {}
    fused = {
        "q_proj": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
        "k_proj": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
        "v_proj": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
        "gate_proj": ("gate_up_proj", ("gate_proj", "up_proj")),
        "up_proj": ("gate_up_proj", ("gate_proj", "up_proj")),
    }
    for name, array in tensors:
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if "rotary_emb" in name:
            continue
        parts = name.split(".")
        # e.g. model.layers.3.self_attn.q_proj.weight -> part "q_proj", kind "weight"
        if len(parts) >= 3 and parts[-2] in fused:
            target, members = fused[parts[-2]]
            prefix = ".".join(parts[:-2])
            key = f"{prefix}.{target}.{parts[-1]}"
            group = pending.setdefault(key, {})
            group[parts[-2]] = array
            if all(m in group for m in members):
                yield key, _concat([group[m] for m in members])
                del pending[key]
            continue
        if cfg.norm_plus_one and name.endswith("norm.weight"):
            array = array + np.float32(1.0)  # Gemma's RMSNorm scales by 1 + w, as transformers computes it
        yield name, array
    if pending:
        raise ValueError(f"incomplete fused weights (missing parts): {sorted(pending)}")


def convert_params(loaded, metadata: dict[str, Any], out_path: Path, *, progress: bool = True) -> None:
    """Convert the model's HF tensors to the package's params.safetensors, checking every shape.

    Streams: each converted tensor is written to its place in the file (`params_file.ParamsWriter`)
    and dropped, so memory holds the source mapping plus about one fused weight, not the model."""
    from .params_file import ParamsWriter

    cfg = LlamaConfig.from_hf(loaded.config)
    expected = {p["name"]: p for p in metadata["params"]}
    if progress:
        from .progress import progress_bar

        bar_cm = progress_bar(total=len(expected), desc="convert weights", unit="tensor")
    else:
        bar_cm = contextlib.nullcontext(_NoBar())
    formats = metadata.get("weight_formats") or {}
    keep = keep_packed_predicate(formats) if any(f != "f32" for f in formats.values()) else None
    with bar_cm as bar, ParamsWriter(out_path, metadata["params"]) as writer:
        for name, weight in convert_hf_tensors(cfg, loaded.tensors(keep) if keep else loaded.tensors()):
            planned = _planned_format(name, formats)
            if isinstance(weight, PackedWeight) and weight.fmt != planned:
                weight = weight.dequantize()  # a plan that differs from the source's: through float
            if not isinstance(weight, PackedWeight) and planned not in ("f32", *HALF_FORMATS):
                weight = PackedWeight.quantize(planned, weight)  # float source: group-quantize now
            if isinstance(weight, PackedWeight):
                base = name.removesuffix(".weight")
                q, scale, minimum = weight.q, weight.scale, weight.min
                scale_spec = expected.get(f"{base}.scale")
                if scale_spec is not None and len(scale_spec["shape"]) == 3:  # row-interleaved (models/quant.py)
                    q, scale, minimum = weight.interleaved_rows(group=scale_spec["shape"][2])
                pieces = {f"{base}.q": q, f"{base}.scale": scale}
                if minimum is not None:
                    pieces[f"{base}.min"] = minimum
            else:
                pieces = {name: weight}
            del weight
            for piece_name, array in pieces.items():
                spec = expected.get(piece_name)
                if spec is None:
                    raise ValueError(f"weight {piece_name!r} has no place in the {cfg.model_type} model")
                if list(array.shape) != spec["shape"]:
                    raise ValueError(f"weight {piece_name!r} has shape {list(array.shape)}, the model expects {spec['shape']}")
                writer.write(piece_name, _as_dtype(array, spec["dtype"]))
                bar.update()
            del pieces
        missing = writer.missing()
    if missing:
        out_path.unlink(missing_ok=True)
        raise ValueError(f"weights missing from the checkpoint: {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def _as_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    """`array` in a parameter's dtype; bfloat16 (which numpy lacks) as its 16-bit patterns, rounded
    to nearest even (exact for values a bfloat16 checkpoint held)."""
    if dtype != "bfloat16":
        return array.astype(dtype, copy=False)
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def half_formats(stored_dtypes) -> dict[str, str] | None:
    """Weight formats for an HF checkpoint stored in 16 bits (all float weights in one of bfloat16 /
    float16, norms possibly float32): kept as stored. None for float32 checkpoints."""
    half = {"BF16": "bf16", "F16": "f16"}
    found = {half[d] for d in stored_dtypes if d in half}
    if len(found) != 1:
        return None
    fmt = found.pop()
    return {"linear": fmt, "embed": fmt, "lm_head": fmt}


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass
