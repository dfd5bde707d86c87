"""GGML block types -> the packed formats of models/quant.py, one tensor at a time.

Every quantized GGML type that a GGUF file may hold maps onto one of the two packed layouts the
int8 kernels read (q4_1: 4-bit quants with a float16 scale and min per 32; q8_0: int8 with a float16
scale per 32):

    GGML    layout  values in memory                                    bits/weight: memory (file)
    Q4_0    q4_1    exact (min = -8 * d)                                5.0 (4.5)
    Q4_1    q4_1    exact (blocks copied)                               5.0 (5.0)
    Q4_K    q4_1    scale d * sc and min -dmin * m rounded to float16   5.0 (4.5)
    Q8_0    q8_0    exact (blocks copied)                               8.5 (8.5)
    Q5_0    q8_0    exact (5-bit ints minus 16 fit int8, same scale)    8.5 (5.5)
    Q5_1    q8_0    dequantized, requantized per 32                     8.5 (6.0)
    Q2_K    q8_0    dequantized, requantized per 32                     8.5 (2.625)
    Q3_K    q8_0    dequantized, requantized per 32                     8.5 (3.4375)
    Q5_K    q8_0    dequantized, requantized per 32                     8.5 (5.5)
    Q6_K    q8_0    dequantized, requantized per 32                     8.5 (6.5625)

Requantizing to q8_0 adds at most half an int8 step
(max|w| / 254 per 32 values), far below the error of the source's own 2-6 bit quants.

A tensor whose scales a float16 cannot hold (Q4_K with d * 63 beyond 65504) goes the requantize
way instead; float tensors (F32/F16/BF16) are not packed here.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from gguf.quants import Q4_K, dequantize

from ..models.packed import PackedWeight

# The layout each quantized type lands in, and whether the packed values equal gguf's dequantize.
LAYOUT = {
    QT.Q4_0: "q4_1", QT.Q4_1: "q4_1", QT.Q4_K: "q4_1",
    QT.Q8_0: "q8_0", QT.Q5_0: "q8_0", QT.Q5_1: "q8_0",
    QT.Q2_K: "q8_0", QT.Q3_K: "q8_0", QT.Q5_K: "q8_0", QT.Q6_K: "q8_0",
}  # fmt: skip
EXACT = (QT.Q4_0, QT.Q4_1, QT.Q8_0, QT.Q5_0)
# Bits in memory per weight of each layout: q4_1 a nibble + fp16 scale and min per 32;
# q8_0 a byte + fp16 scale per 32.
BITS_PER_WEIGHT = {"q4_1": 4 + 2 * 16 / 32, "q8_0": 8 + 16 / 32}

_FP16_MAX = 65504.0
_CHUNK_VALUES = 1 << 24  # the requantize path dequantizes this many float32 values at a time


def packed_format(qtype: QT, shape: tuple[int, ...], data: np.ndarray | None = None) -> tuple[str | None, str]:
    """(layout, why) for a GGUF tensor of `qtype` with numpy shape `shape` ([rows, cols]);
    layout None keeps the tensor float, `why` saying so. `data` (the raw blocks) lets Q4_K check
    that its scale products fit float16."""
    if qtype not in LAYOUT:
        return None, f"no packed layout for GGML type {qtype.name}"
    if len(shape) != 2:
        return None, f"{len(shape)}-D tensor"
    if shape[1] % 32:
        return None, f"row of {shape[1]} values is not a multiple of the 32-value block"
    fmt = LAYOUT[qtype]
    if qtype == QT.Q4_K and data is not None:
        d = np.asarray(data, dtype=np.uint8).reshape(-1, GGML_QUANT_SIZES[qtype][1])[:, :4]
        largest = np.abs(np.ascontiguousarray(d).view(np.float16).astype(np.float32)).max(initial=0.0)
        if not largest * 63 < _FP16_MAX:  # 6-bit sub-block scales: d * 63 must stay a finite fp16
            return "q8_0", "Q4_K scales beyond float16: requantized to q8_0"
    return fmt, "exact" if qtype in EXACT else ("fp16 scale rounding" if qtype == QT.Q4_K else "requantized")


def repack(qtype: QT, data: np.ndarray, rows: int, cols: int, fmt: str) -> PackedWeight:
    """The [rows, cols] tensor of GGML blocks `data` in packed layout `fmt` (from `packed_format`).
    Copies: `data` may be a memory-mapped view of the file."""
    block, nbytes = GGML_QUANT_SIZES[qtype]
    blocks = np.asarray(data, dtype=np.uint8).reshape(rows, cols // block, nbytes)
    if fmt == LAYOUT[qtype] and qtype in (QT.Q4_0, QT.Q4_1, QT.Q8_0):
        return PackedWeight.from_blocks(qtype.name, blocks)
    if fmt == "q4_1" and qtype == QT.Q4_K:
        return _q4_k_to_q4_1(blocks)
    if fmt == "q8_0" and qtype == QT.Q5_0:
        return _q5_0_to_q8_0(blocks)
    if fmt not in ("q4_1", "q8_0"):
        raise ValueError(f"no packed layout {fmt!r}; expected q4_1 or q8_0")
    return _requantize(qtype, blocks, rows, cols, fmt)


def _q4_k_to_q4_1(blocks: np.ndarray) -> PackedWeight:
    """Q4_K super-blocks (fp16 d, dmin; 8 six-bit scales and mins; 256 nibbles) -> q4_1 blocks of
    32: w = (d * sc) * q - dmin * m is a q4_1 block with scale d * sc and min -dmin * m."""
    rows, supers, _ = blocks.shape
    d = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16).astype(np.float32)  # [rows, supers, 1]
    dmin = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16).astype(np.float32)
    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(blocks[..., 4:16]).reshape(-1, 12))
    scale = (d * sc.reshape(rows, supers, 8)).astype(np.float16).reshape(rows, -1)
    minimum = (-(dmin * m.reshape(rows, supers, 8))).astype(np.float16).reshape(rows, -1)
    # qs: 4 chunks of 32 bytes; chunk j holds sub-block 2j in the low nibbles, 2j + 1 in the high.
    qs = blocks[..., 16:].reshape(rows, supers, 4, 1, 32)
    nibbles = (qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)) & np.uint8(15)
    nibbles = nibbles.reshape(rows, supers * 8, 32)
    # q4_1 byte i of a block: element i in the low nibble, element i + 16 in the high one.
    q = nibbles[..., :16] | (nibbles[..., 16:] << np.uint8(4))
    return PackedWeight("q4_1", np.ascontiguousarray(q).reshape(rows, -1), scale, minimum)


def _q5_0_to_q8_0(blocks: np.ndarray) -> PackedWeight:
    """Q5_0 blocks (fp16 d; 32 high bits; 16 bytes of low nibbles): w = d * (q5 - 16), and
    q5 - 16 in [-16, 15] is an int8 with the same scale."""
    rows, n, _ = blocks.shape
    scale = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16).reshape(rows, n).copy()
    qh = np.ascontiguousarray(blocks[..., 2:6]).view("<u4")  # [rows, n, 1]
    high = ((qh >> np.arange(32, dtype=np.uint32)) & np.uint32(1)).astype(np.uint8) << np.uint8(4)
    qs = blocks[..., 6:22]
    low = np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=-1)  # elements 0..15, 16..31
    q = ((low | high).astype(np.int16) - 16).astype(np.int8)
    return PackedWeight("q8_0", q.reshape(rows, -1), scale)


def _requantize(qtype: QT, blocks: np.ndarray, rows: int, cols: int, fmt: str) -> PackedWeight:
    """Dequantize with the `gguf` package and group-quantize to `fmt`, a band of rows at a time
    (memory stays near _CHUNK_VALUES float32s, not the whole tensor)."""
    step = max(1, _CHUNK_VALUES // cols)
    parts = [
        PackedWeight.quantize(fmt, dequantize(blocks[r : r + step].reshape(-1, blocks.shape[-1] * blocks.shape[1]), qtype).reshape(-1, cols))
        for r in range(0, rows, step)
    ]
    if len(parts) == 1:
        return parts[0]
    mins = None if parts[0].min is None else np.concatenate([p.min for p in parts])
    return PackedWeight(fmt, np.concatenate([p.q for p in parts]), np.concatenate([p.scale for p in parts]), mins)
