"""Which instructions an llvm target offers: the CPU kernels ask before choosing their paths."""

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
