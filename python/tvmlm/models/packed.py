"""Block-quantized weights on the host: `PackedWeight` (the layouts of models/quant.py, in numpy)
and the `QUANTIZATIONS` a float model can be group-quantized to. No tvm import."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

# EngineConfig.quantization values: group-quantize float weights to q4_1/q8_0, or "none" (keep float).
QUANTIZATIONS = ("none", "q4_1", "q8_0")


@dataclasses.dataclass
class PackedWeight:
    """A weight kept in a block-quantized format (see tvmlm/models/quant.py for the layouts).

    q4_1: q uint8 [rows, cols/2], scale and min float16 [rows, cols/32]; q8_0: q int8 [rows, cols],
    scale float16 [rows, cols/32], min None. Rows may be permuted/concatenated like a dense weight.
    """

    fmt: str
    q: np.ndarray
    scale: np.ndarray
    min: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        rows, width = self.q.shape
        return rows, width * 2 if self.fmt == "q4_1" else width

    @classmethod
    def from_blocks(cls, kind: str, blocks: np.ndarray) -> "PackedWeight":
        """Split llama.cpp blocks (uint8 [rows, cols/32, block bytes]) of GGML type `kind`
        ("Q4_0", "Q4_1" or "Q8_0") into packed arrays (copies: the source may be memory-mapped)."""
        rows = blocks.shape[0]
        scale = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16).reshape(rows, -1).copy()
        if kind == "Q8_0":
            return cls("q8_0", np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, -1), scale)
        if kind == "Q4_1":
            minimum = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16).reshape(rows, -1).copy()
            return cls("q4_1", np.ascontiguousarray(blocks[..., 4:]).reshape(rows, -1), scale, minimum)
        if kind == "Q4_0":  # w = (nibble - 8) * d: q4_1 with min = -8 * d (exact in float16)
            return cls("q4_1", np.ascontiguousarray(blocks[..., 2:]).reshape(rows, -1), scale, scale * np.float16(-8))
        raise ValueError(f"no packed format for GGML type {kind!r}; supported: Q4_0, Q4_1, Q8_0")

    @classmethod
    def quantize(cls, fmt: str, weight: np.ndarray) -> "PackedWeight":
        """Group-quantize a float [rows, cols] weight to `fmt` (q4_1 or q8_0: 32-element blocks,
        float16 scales) with the `gguf` package's reference quantizer, as llama.cpp would."""
        from gguf import GGMLQuantizationType, quants

        kind = {"q4_1": "Q4_1", "q8_0": "Q8_0"}.get(fmt)
        if kind is None:
            raise ValueError(f"cannot quantize to {fmt!r}; supported: q4_1, q8_0")
        rows, cols = weight.shape
        if cols % 32:
            raise ValueError(f"cannot quantize a weight of {cols} columns: not a multiple of the 32-element block")
        blocks = quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), GGMLQuantizationType[kind])
        return cls.from_blocks(kind, blocks.reshape(rows, cols // 32, -1))

    def interleaved_rows(self, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(q, scale, min) in the row-interleaved layout of tvmlm/models/quant.py: per group of
        `group` rows and per block, 4-byte words of the group's rows side by side, so that one
        vector holds the same word of every row (q [rows/group, blocks, bytes per row block * group],
        scale and min [rows/group, blocks, group])."""
        rows, blocks = self.scale.shape
        if rows % group:
            raise ValueError(f"cannot interleave {rows} rows in groups of {group}")
        words = self.q.shape[1] // blocks // 4

        def scales(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.ascontiguousarray(a.reshape(rows // group, group, blocks).transpose(0, 2, 1))

        q = self.q.reshape(rows // group, group, blocks, words, 4).transpose(0, 2, 3, 1, 4)
        return np.ascontiguousarray(q).reshape(rows // group, blocks, -1), scales(self.scale), scales(self.min)

    def map_rows(self, fn: Callable[[np.ndarray], np.ndarray]) -> "PackedWeight":
        return PackedWeight(self.fmt, fn(self.q), fn(self.scale), None if self.min is None else fn(self.min))

    def dequantize(self) -> np.ndarray:
        scale = self.scale.astype(np.float32).repeat(32, axis=1)
        if self.fmt == "q8_0":
            return self.q.astype(np.float32) * scale
        rows = self.q.shape[0]
        blocks = self.q.reshape(rows, -1, 1, 16) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
        nibbles = (blocks & np.uint8(15)).reshape(rows, -1).astype(np.float32)
        return nibbles * scale + self.min.astype(np.float32).repeat(32, axis=1)
