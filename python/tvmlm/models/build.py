"""From an HF config to a compiled module. Imports tvm: compile time only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._version import __version__
from .llama import LlamaForCausalLM
from .convert import HALF_FORMATS
from .llama_config import LlamaConfig, check_target_support


def make_target(device_kind: str, target: dict[str, Any] | None = None):
    """The TVM target for a device kind: `target` (JSON dict form: TVM 0.27 rejects target
    strings), or this machine's as devices.tvm_target gives it; CUDA gets an llvm host."""
    from tvm.target import Target

    from ..devices import Device, tvm_target

    spec = target if target is not None else tvm_target(Device(device_kind))
    if spec.get("kind") == "cuda" and "host" not in spec:
        return Target(spec, host={"kind": "llvm"})
    return Target(spec)


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "uint8": 1, "int8": 1}


@dataclass
class BuiltModule:
    mod: Any  # tvm.IRModule
    target: Any  # tvm.target.Target
    metadata: dict[str, Any]

    def pass_config(self) -> dict[str, Any]:
        # CUDA graphs: RewriteCUDAGraph (in TVM's finalize passes) captures the static stretches of
        # decode / batch_decode (see _attach_cuda_graph_hints) and replays them, one launch each.
        return {"relax.backend.use_cuda_graph": self.target.kind.name == "cuda"}

    def compile(self):
        import tvm

        from .pipeline import relax_pipeline

        with tvm.transform.PassContext(config=self.pass_config()):
            if self.target.kind.name != "cuda":
                return tvm.compile(self.mod, target=self.target, relax_pipeline=relax_pipeline(self.target))
            from .cuda_codegen import enable_cuda_codegen

            enable_cuda_codegen()  # kernels compiled by nvcc now, not kept as CUDA source
            with self.target:  # Target.current() gives nvcc the arch
                return tvm.compile(self.mod, target=self.target, relax_pipeline=relax_pipeline(self.target))


def build_module(hf_config: dict[str, Any], device_kind: str, target: dict[str, Any] | None, options) -> BuiltModule:
    """Export the nn.Module for `hf_config` to a Relax IRModule with `_metadata` attached."""
    import tvm
    from tvm import relax

    cfg = LlamaConfig.from_hf(hf_config)
    check_target_support(cfg, device_kind)
    cfg.dtype = options.dtype
    cfg.max_batch_size = options.max_batch_size
    if options.prefill_chunk_size:
        cfg.prefill_chunk_size = options.prefill_chunk_size
    formats = dict(options.weight_formats)
    cfg.linear_format = formats.get("linear", "f32")
    cfg.embed_format = formats.get("embed", "f32")
    cfg.lm_head_format = formats.get("lm_head", "f32")
    # per-tensor entries (convert.plan_weight_formats): decoder linears that differ from "linear"
    cfg.linear_formats = {k: v for k, v in formats.items() if k not in ("linear", "embed", "lm_head")}
    tvm_target = make_target(device_kind, target)
    from . import cpu_int8_matmul, x86_bf16

    # The int8 kernels read packed weights in the row-interleaved layout; other paths, the plain one.
    # This is the one place that chooses int8 activations: the pipeline swaps in the int8 kernel for
    # exactly the interleaved weights.
    cfg.interleave_rows = bool(options.int8_activations and cpu_int8_matmul.supported(tvm_target))
    # Packed weights on the int8 path already trade exactness for speed as llama.cpp does; their KV
    # cache defaults to bfloat16 where the CPU multiplies bfloat16 (attention then runs on vdpbf16ps,
    # models/x86_bf16.py): half the KV memory, 1.3-1.5x faster long prefills, and next-token
    # distributions as close to float32's as a float16 cache (llama.cpp's default) gets.
    packed = any(fmt not in ("f32", *HALF_FORMATS) for fmt in formats.values())
    bf16_kv = cfg.interleave_rows and packed and options.dtype == "float32" and x86_bf16.supported(tvm_target)
    cfg.kv_dtype = options.kv_dtype or ("bfloat16" if bf16_kv else options.dtype)
    model = LlamaForCausalLM(cfg)
    with tvm_target:
        mod, named_params, _externs = model.export_tvm(spec=model.get_default_spec(), allow_extern=True)
    if tvm_target.kind.name == "llvm":
        from .cpu_attention import SLIDING_WINDOW_ATTR
        from .cpu_rope import replace_fused_rope

        # TVM's CPU rope kernel is serial and evaluates cos/sin per element of every head (with
        # rope in the model, the cache only splits qkv: its rope parameters do not matter)
        mod = replace_fused_rope(mod, theta=cfg.rope_theta, head_dim=cfg.head_dim, num_q_heads=cfg.num_attention_heads,
                                 num_kv_heads=cfg.num_key_value_heads, dtype=cfg.kv_dtype,
                                 rope_scaling=None if cfg.rope_in_model else cfg.rope_scaling)
        if cfg.sliding_layers:  # the attention kernels' window (models/cpu_attention.py)
            mod = mod.with_attr(SLIDING_WINDOW_ATTR, cfg.sliding_window)
    if tvm_target.kind.name == "cuda":
        mod = _attach_cuda_graph_hints(mod, cfg.max_batch_size)
    params = [{"name": n, "shape": [int(d) for d in p.shape], "dtype": p.dtype} for n, p in named_params]
    metadata = {
        "architecture": cfg.model_type,
        "model_type": hf_config.get("model_type", cfg.model_type),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "context_window_size": cfg.context_window_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "dtype": cfg.dtype,
        "kv_dtype": cfg.kv_dtype,
        "prefill_chunk_size": cfg.prefill_chunk_size,
        "max_batch_size": cfg.max_batch_size,
        "target": str(tvm_target.kind.name),
        "target_json": json.loads(json.dumps(dict(tvm_target.export()), default=str)),
        "tvmlm_version": __version__,
        "params": params,
        "weight_formats": {"linear": cfg.linear_format, "embed": cfg.embed_format, "lm_head": cfg.lm_head_format,
                           **cfg.linear_formats},
        "params_bytes": int(sum(int(np.prod(p["shape"])) * _DTYPE_BYTES[p["dtype"]] for p in params)),
    }
    bb = relax.BlockBuilder(mod)
    with bb.function("_metadata", params=[]):
        bb.emit_func_output(tvm.ir.StringImm(json.dumps(metadata)))
    return BuiltModule(bb.finalize(), tvm_target, metadata)


def _attach_cuda_graph_hints(mod, max_batch_size: int):
    """Let the decode functions be captured into CUDA graphs: one graph per batch size (capture
    key `batch_size`), with every batch-sized intermediate planned at the compiled maximum so its
    address is the same on each replay. The C++ side never passes more than max_batch_size."""
    from tvm import relax

    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function) or gv.name_hint not in ("decode", "batch_decode"):
            continue
        func = func.with_attr("tir_var_upper_bound", {"batch_size": max_batch_size})
        if gv.name_hint == "batch_decode":
            func = func.with_attr("relax.rewrite_cuda_graph.capture_symbolic_vars", ["batch_size"])
        mod[gv] = func
    return mod
