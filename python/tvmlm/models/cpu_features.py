"""LLVM-level helpers for the CPU kernels: which instructions an llvm target offers (the kernels
ask before choosing their paths), and linking hand-written LLVM IR into a kernel."""

from __future__ import annotations

import tvm


def llvm_has(target: tvm.target.Target, *features: str) -> bool:
    """Whether `target` is llvm with every one of `features` (LLVM names, e.g. "avx512vnni").
    An LLVM that cannot answer counts as no: the caller takes its portable path."""
    if target.kind.name != "llvm":
        return False
    from tvm.target.codegen import target_has_features

    try:
        return all(target_has_features(f, target) for f in features)
    except Exception:  # noqa: BLE001 - see the docstring
        return False


def link_llvm_ir(func: tvm.tirx.PrimFunc, llvm_ir: str) -> tvm.tirx.PrimFunc:
    """`func` with `llvm_ir` linked into its LLVM module (TIR's `pragma_import_llvm` attribute, which
    codegen visits before the body), for helpers TIR cannot express, called via call_pure_extern."""
    body = tvm.tirx.AttrStmt(tvm.tirx.IntImm("int32", 0), "pragma_import_llvm", tvm.ir.StringImm(llvm_ir), func.body)
    return func.with_body(body)
