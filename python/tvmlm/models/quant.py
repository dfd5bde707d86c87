"""Weights kept quantized in memory, dequantized inside the matmul kernels.

Formats (one per weight; `linear` and `embedding` pick by the format name):

    f32    float32 [N, K]                                     (also f16/bf16 models: dtype)
    q4_1   q: uint8 [N, K/2], scale, min: float16 [N, K/32]   w = scale * nibble + min
    q8_0   q: int8  [N, K],   scale: float16 [N, K/32]        w = scale * q

q4_1 keeps llama.cpp's nibble order inside each 32-element block (byte j holds element j in its
low nibble and element j + 16 in its high nibble), so GGUF Q4_1 blocks copy over as they are and a
16-byte vector load yields 16 consecutive weights per nibble half. GGUF Q4_0 maps onto q4_1
exactly (min = -8 * scale); Q8_0 maps onto q8_0. The dequantized value is the same float32 that
the `gguf` package computes, so the packed and the dequantize-to-f32 paths see identical weights.

Row-interleaved layout (`row_group` = ROW_GROUP = 16; for the int8 kernels of
models/cpu_int8_matmul.py): the same bytes, regrouped so that one 64-byte vector holds 4
consecutive bytes of each of 16 rows. With G = rows / 16, r = row % 16, and W = 4-byte words per
row block (q4_1: 4, q8_0: 8):

    q      [G, K/32, W * 64]   byte c of word s of row r of block b at [g, b, s * 64 + r * 4 + c]
    scale  [G, K/32, 16]       (min likewise)

`PackedWeight.interleaved_rows` converts; weights whose row count is not a multiple of 16 keep the
plain layout.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

FORMATS = ("f32", "q4_1", "q8_0")
BLOCK = 32
ROW_GROUP = 16  # rows per group of the row-interleaved layout (= int32 lanes of a 512-bit register)


def _weight(fmt: str, q: te.Tensor, scale: te.Tensor, minimum: te.Tensor | None, n, k):
    """The float32 value of element (n, k) of a packed weight (embedding lookups)."""
    return _block_value(fmt, q, scale, minimum, n, k // BLOCK, k % BLOCK // HALF, k % HALF)


HALF = BLOCK // 2


def _block_value(fmt: str, q: te.Tensor, scale: te.Tensor, minimum: te.Tensor | None, n, b, h, j):
    """Element j of half h of block b of row n. Written per block so that, for a fixed (n, b, h),
    the 16 values of j read 16 consecutive bytes and one scale (plain layout: one vector load)."""
    index = n, b
    if len(scale.shape) == 3:  # row-interleaved: byte c of row word s -> [g, b, s * 64 + r * 4 + c]
        g, r = n // ROW_GROUP, n % ROW_GROUP
        index = g, b, r

        def byte(i):
            return q[g, b, i // 4 * (4 * ROW_GROUP) + r * 4 + i % 4]
    else:

        def byte(i):
            return q[n, b * (BLOCK if fmt == "q8_0" else HALF) + i]

    s = scale[index].astype("float32")
    if fmt == "q8_0":
        return byte(h * HALF + j).astype("float32") * s
    nibble = tirx.bitwise_and(tirx.shift_right(byte(j), (h * 4).astype("uint8")), tirx.const(15, "uint8"))
    return nibble.astype("float32") * s + minimum[index].astype("float32")


def dequantize_blocks(fmt: str, q: te.Tensor, scale: te.Tensor, minimum: te.Tensor | None, rows: int, cols: int) -> te.Tensor:
    """The whole weight as float32 [rows, cols / 32, 2, 16] (row-major identical to [rows, cols])."""
    return te.compute(
        (rows, cols // BLOCK, 2, HALF),
        lambda n, b, h, j: _block_value(fmt, q, scale, minimum, n, b, h, j),
        name="dequantize",
    )


# quant_matmul name hint suffix: the int8 kernel carries this matmul's activations as two int8
# digits per block (cpu_int8_matmul.py)
RESIDUAL_SUFFIX = "_residual"


def quant_matmul(x: Tensor, fmt: str, q: Tensor, scale: Tensor, minimum: Tensor | None, n_out: int, k_in: int,
                 residual: bool = False) -> Tensor:
    """x @ dequantize(W).T as one kernel: a dequantize stage feeding the matmul stage. `residual`
    names it for the int8 kernel's two-digit activations (cpu_int8_matmul.py)."""

    def compute(x: te.Tensor, q: te.Tensor, scale: te.Tensor, *mins: te.Tensor):
        m = mins[0] if mins else None
        # A separate stage, so the CPU schedule can dequantize a tile of rows once and reuse it
        # for every activation row (prefill), instead of once per row.
        w = dequantize_blocks(fmt, q, scale, m, n_out, k_in)
        k = te.reduce_axis((0, k_in), name="k")
        *lead, _ = x.shape
        return te.compute(
            (*lead, n_out),
            lambda *i: te.sum(x[(*i[:-1], k)] * w[i[-1], k // BLOCK, k % BLOCK // HALF, k % HALF], axis=k),
            name="NT_matmul",
        )

    args = [x, q, scale] + ([minimum] if minimum is not None else [])
    return op.tensor_expr_op(compute, name_hint=f"{fmt}_matmul" + (RESIDUAL_SUFFIX if residual else ""), args=args)


class _Packed(nn.Module):
    """The parameters of one packed [rows, cols] weight."""

    def __init__(self, rows: int, cols: int, fmt: str, interleave_rows: bool = False, residual: bool = False):
        if fmt not in ("q4_1", "q8_0"):
            raise ValueError(f"packed weight format {fmt!r}; expected q4_1 or q8_0")
        if cols % BLOCK:
            raise ValueError(f"{cols} columns is not a multiple of the {BLOCK}-element block")
        self.rows, self.cols, self.fmt, self.residual = rows, cols, fmt, residual
        dtype = "uint8" if fmt == "q4_1" else "int8"
        row_bytes = cols // 2 if fmt == "q4_1" else cols
        if interleave_rows and rows % ROW_GROUP == 0:
            groups, blocks = rows // ROW_GROUP, cols // BLOCK
            q_shape = (groups, blocks, row_bytes // blocks * ROW_GROUP)
            scale_shape: tuple[int, ...] = (groups, blocks, ROW_GROUP)
        else:
            q_shape, scale_shape = (rows, row_bytes), (rows, cols // BLOCK)
        self.q = nn.Parameter(q_shape, dtype)
        self.min = nn.Parameter(scale_shape, "float16") if fmt == "q4_1" else None
        self.scale = nn.Parameter(scale_shape, "float16")

    def matmul(self, x: Tensor) -> Tensor:
        return quant_matmul(x, self.fmt, self.q, self.scale, self.min, self.rows, self.cols, self.residual)


class QuantLinear(_Packed):
    """y = x @ dequantize(W).T (+ bias); parameters `q`, `scale` (+ `min`, `bias`). `residual`:
    int8 kernels carry x as two int8 digits (cpu_int8_matmul.py)."""

    def __init__(self, in_features: int, out_features: int, fmt: str, bias: bool = False, interleave_rows: bool = False,
                 residual: bool = False):
        super().__init__(out_features, in_features, fmt, interleave_rows, residual)
        self.bias = nn.Parameter((out_features,), "float32") if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.matmul(x)
        return y + self.bias if self.bias is not None else y


class QuantEmbedding(_Packed):
    """Embedding lookup that dequantizes only the rows it reads; `matmul` serves a tied lm_head."""

    def __init__(self, num: int, dim: int, fmt: str, interleave_rows: bool = False):
        super().__init__(num, dim, fmt, interleave_rows)

    def forward(self, ids: Tensor) -> Tensor:
        fmt, dim = self.fmt, self.cols

        def compute(ids: te.Tensor, q: te.Tensor, scale: te.Tensor, *mins: te.Tensor):
            m = mins[0] if mins else None
            return te.compute((ids.shape[0], dim), lambda t, k: _weight(fmt, q, scale, m, ids[t], k), name="embedding")

        args = [ids, self.q, self.scale] + ([self.min] if self.min is not None else [])
        return op.tensor_expr_op(compute, name_hint=f"{fmt}_embedding", args=args)
