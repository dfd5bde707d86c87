"""Weights kept in 16 bits as a Hugging Face checkpoint stores them (bfloat16 / float16), with
float32 activations and sums: y = x @ W^T where each weight is widened as it is read (a bfloat16
is the high half of a float32; float16 converts with F16C), so the model's memory and the bytes a
decode step streams are the checkpoint's, not twice that.

The matmul is a plain `matmul_half` reduction that the CPU matmul schedule (models/cpu_schedule.py)
tiles like a float32 one; the widening is part of its inner vector loop.
"""

from __future__ import annotations

from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from .convert import HALF_FORMATS

DTYPES = {"bf16": "bfloat16", "f16": "float16"}
assert set(DTYPES) == set(HALF_FORMATS)


def half_matmul(x: Tensor, w: Tensor) -> Tensor:
    """x [..., k] float32 @ w [n, k] (16-bit)^T -> [..., n] float32."""

    def compute(x: te.Tensor, w: te.Tensor):
        k = te.reduce_axis((0, x.shape[-1]), name="k")
        return te.compute(
            (*x.shape[:-1], w.shape[0]),
            lambda *i: te.sum(x[(*i[:-1], k)] * w[i[-1], k].astype("float32"), axis=k),
            name="matmul_half",
        )

    return op.tensor_expr_op(compute, name_hint="matmul_half", args=[x, w])


class HalfLinear(nn.Module):
    """nn.Linear with a 16-bit weight (float32 bias, activations and output)."""

    def __init__(self, in_features: int, out_features: int, fmt: str, bias: bool = False):
        self.weight = nn.Parameter((out_features, in_features), DTYPES[fmt])
        self.bias = nn.Parameter((out_features,), "float32") if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = half_matmul(x, self.weight)
        return y + self.bias if self.bias is not None else y


class HalfEmbedding(nn.Module):
    """Embedding rows read from a 16-bit table and widened; `matmul` serves a tied lm_head."""

    def __init__(self, num: int, dim: int, fmt: str):
        self.weight = nn.Parameter((num, dim), DTYPES[fmt])

    def forward(self, ids: Tensor) -> Tensor:
        return op.take(self.weight, ids, axis=0).astype("float32")

    def matmul(self, x: Tensor) -> Tensor:
        return half_matmul(x, self.weight)
