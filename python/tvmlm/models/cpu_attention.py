"""The module pass that installs tvmlm's CPU attention kernels in TVM's TIRPagedKVCache.

TVM registers fully serial, scalar TIR attention kernels for the llvm target (``_attention_prefill_ragged_cpu``,
``_attention_prefill_cpu`` in ``tvm.relax.frontend.nn.llm._prefill_kernels``): they visit every (query, key) pair
including causally masked ones, branch on ``rotary_mode`` in the innermost loop and never run in parallel.
:func:`replace_cpu_attention_kernels` swaps those PrimFuncs (keeping their GlobalVars, so the
``vm.builtin.paged_attention_kv_cache_create`` arguments still point at them) for kernels with the same
signature and semantics that

* run in parallel over (block of query rows, kv head): each iteration owns its local buffers;
* visit only the keys the causal mask allows (``col < kv_len - qo_len + row + 1``), in tiles of
  ``SCORE_TILE`` keys (ragged prefill) or of one page (paged kernels);
* keep the ``group_size`` query heads sharing a kv head together, so each key/value row is loaded once per group;
* use an online softmax in float32 (scores in log2 space, pre-scaled by ``sm_scale * log2(e)``), and write
  ``lse = max + log2(sum)`` exactly as the originals do (the cache merges attention states with it);
* have explicitly vectorized inner loops over head_dim.

Causal rows are balanced across threads by pairing block ``i`` with block ``n_blocks - 1 - i`` in one iteration
(TVM's parallel loops are statically chunked).

rope: tvmlm uses ``RopeMode.NORMAL`` (rope applied to q and k before the attention call, ``rotary_mode == 0``).
The kernels assert ``rotary_mode == 0`` at run time; the pass leaves the originals in place when the module's KV
cache is created with ``RopeMode.INLINE``.

Sliding windows: a layer whose window is shorter than the context passes a *negative* ``sm_scale``
(models/llama.py); the kernels then use ``|sm_scale|`` and let a query at position p see only keys at
positions > p - window (transformers' ``sliding_window_overlay``), with the window compiled in
(``layer_sliding_window_size`` of the KV cache, which TVM's cache itself leaves inert when every
layer is "mha"). Positions come from ``q_rope_position`` and ``k_rope_pos_offset``, which the
cache fills for every kernel whatever the rope mode, so forked and chunked sequences (keys split
over pages and depths) are masked by absolute position. Keys before the window are not visited.

Degenerate rows with no visible key (only possible when ``kv_len < qo_len``, which the KV cache never produces)
get output 0 and lse ``-5e4``; the originals average all values there.
"""

from __future__ import annotations

import re

import tvm

from . import x86_bf16
from .cpu_attention_paged import decode_paged_cpu, prefill_paged_cpu
from .cpu_attention_ragged import bf16_dot_fits, ragged_prefill_cpu

__all__ = ["SLIDING_WINDOW_ATTR", "replace_cpu_attention_kernels"]

# IRModule attribute: the sliding window of a model with sliding-window layers (models/build.py)
SLIDING_WINDOW_ATTR = "tvmlm_sliding_window"


def _kv_cache_create_calls(mod: tvm.ir.IRModule) -> list:
    from tvm import relax

    found = []

    @relax.expr_functor.visitor
    class _Visitor(relax.PyExprVisitor):
        def visit_call_(self, call):  # noqa: N802
            if (
                isinstance(call.op, tvm.ir.Op)
                and call.op.name == "relax.call_pure_packed"
                and isinstance(call.args[0], relax.ExternFunc)
                and call.args[0].global_symbol == "vm.builtin.paged_attention_kv_cache_create"
            ):
                found.append(call)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            _Visitor().visit_expr(func)
    return found


# positions in the vm.builtin.paged_attention_kv_cache_create call (args[0] is the ExternFunc), see
# TIRPagedKVCache.__init__ in tvm/relax/frontend/nn/llm/kv_cache.py (llvm target)
_ARG_HEADS = (3, 4, 5, 6)  # num_attention_heads, num_key_value_heads, qk_head_dim, v_head_dim
_ARG_ROPE_MODE = 9
_ARG_RAGGED_PREFILL = 16
_ARG_PAGED_PREFILL = 17  # tir_attention_prefill_cpu (no sliding window)
_ARG_DECODE = 18  # tir_attention_decode_cpu
_ARG_DECODE_SLIDING = 20  # tir_attention_decode_cpu_sliding_window


def _int(arg):
    """The Python int of a relax PrimValue / IntImm argument, or None."""
    while not isinstance(arg, int) and hasattr(arg, "value"):
        arg = arg.value
    return arg if isinstance(arg, int) else None


def _q_dtype(func) -> str | None:
    """dtype of the q buffer of a CPU attention PrimFunc (the Python API of this TVM build has no buffer_map)."""
    if not isinstance(func, tvm.tirx.PrimFunc):
        return None
    match = re.search(r"\bq: T\.Buffer\(\([^)]*\)(?:, \"(\w+)\")?", func.script())
    if match is None:
        return None
    return match.group(1) or "float32"


def _decode_layout(func) -> tuple[str, int, int, int] | None:
    """(dtype, h_kv, page_size, head_dim) of the ``pages`` buffer of a CPU decode PrimFunc."""
    if not isinstance(func, tvm.tirx.PrimFunc):
        return None
    match = re.search(r'\bpages: T\.Buffer\(\("?\w+"?, 2, (\d+), (\d+), (\d+)\)(?:, "(\w+)")?', func.script())
    if match is None:
        return None
    return match.group(4) or "float32", int(match.group(1)), int(match.group(2)), int(match.group(3))


def _prefill_layout(func) -> tuple[str, int, int, int] | None:
    """(dtype, h_kv, page_size, head_dim) of the ``pages`` buffer of TVM's (non-sliding) CPU paged-prefill PrimFunc."""
    symbol = str((func.attrs or {}).get("global_symbol", "")) if isinstance(func, tvm.tirx.PrimFunc) else ""
    if symbol != "batch_prefill_paged_kv_cpu":
        return None
    return _decode_layout(func)


def _tir_kernel_gv(arg):
    fields = getattr(arg, "fields", None)
    if fields is not None and len(fields) == 2 and isinstance(fields[1], tvm.ir.GlobalVar):
        return arg.fields[1]
    return None


def replace_cpu_attention_kernels() -> tvm.transform.Pass:
    """Module pass: replace the KV cache's CPU attention PrimFuncs with tvmlm's kernels
    (cpu_attention_ragged.py, cpu_attention_paged.py).

    Kernels are found through the ``vm.builtin.paged_attention_kv_cache_create`` call, so the GlobalVars it
    references are kept. Modules whose cache uses ``RopeMode.INLINE`` are left unchanged."""
    from tvm.relax.frontend.nn.llm.kv_cache import RopeMode

    @tvm.transform.module_pass(opt_level=0, name="tvmlm_replace_cpu_attention")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        replace = {}
        target = tvm.target.Target.current(allow_none=True)
        window = int((mod.attrs or {}).get(SLIDING_WINDOW_ATTR, 0))
        for call in _kv_cache_create_calls(mod):
            if len(call.args) <= _ARG_RAGGED_PREFILL:
                continue
            rope_mode = call.args[_ARG_ROPE_MODE]  # a relax PrimValue: an IntImm, or wraps one in .value
            rope_mode = _int(rope_mode)
            if rope_mode is None or rope_mode == int(RopeMode.INLINE):
                continue
            h_q, h_kv, d_qk, d_v = (_int(call.args[i]) for i in _ARG_HEADS)
            gv = _tir_kernel_gv(call.args[_ARG_RAGGED_PREFILL])
            dtype = _q_dtype(mod[gv]) if gv is not None else None
            if None in (h_q, h_kv, d_qk, d_v, dtype) or h_q % h_kv != 0:
                continue
            if isinstance(mod[gv], tvm.tirx.PrimFunc) and len(mod[gv].params) == 14:
                # a bfloat16 KV cache gets bfloat16 q, k, v: multiply them as such where the CPU can
                bf16_dot = dtype == "bfloat16" and bf16_dot_fits(d_qk, d_v) and target is not None and x86_bf16.supported(target)
                func = ragged_prefill_cpu(h_kv, h_q, d_qk, d_v, str(dtype), bf16_dot=bf16_dot, window=window)
                replace[gv] = func.with_attrs(dict(mod[gv].attrs or {}))
            gv = _tir_kernel_gv(call.args[_ARG_PAGED_PREFILL])
            if gv is not None and isinstance(mod[gv], tvm.tirx.PrimFunc) and len(mod[gv].params) == 15 and d_qk == d_v:
                layout = _prefill_layout(mod[gv])
                if layout is not None and layout[1] == h_kv and layout[3] == d_qk:
                    func = prefill_paged_cpu(h_kv, h_q, d_qk, layout[0], page_size=layout[2], window=window)
                    replace[gv] = func.with_attrs(dict(mod[gv].attrs or {}))
            for pos, sliding in ((_ARG_DECODE, False), (_ARG_DECODE_SLIDING, True)):
                gv = _tir_kernel_gv(call.args[pos]) if len(call.args) > pos else None
                if gv is None or not isinstance(mod[gv], tvm.tirx.PrimFunc) or len(mod[gv].params) != 13:
                    continue
                if not str(mod[gv].attrs["global_symbol"]).startswith("batch_decode_paged_kv_cpu"):
                    continue
                layout = _decode_layout(mod[gv])
                if layout is None or layout[1] != h_kv or layout[3] != d_qk or d_qk != d_v:
                    continue
                dtype, _, page_size, _ = layout
                func = decode_paged_cpu(h_kv, h_q, d_qk, dtype, sliding_window=sliding, page_size=page_size, window=window)
                replace[gv] = func.with_attrs(dict(mod[gv].attrs or {}))
        for gv, func in replace.items():
            mod[gv] = func
        return mod

    return _pass
