"""One Llama-family decoder in `tvm.relax.frontend.nn`.

Covers Llama (GQA, tied or untied embeddings, rope_theta, Llama-3 rope scaling), Qwen2 (q/k/v bias),
Qwen3 (q/k RMSNorm) and Mistral (explicit head_dim). The exported functions follow the library
contract in docs/contracts.md: embed, decode, batch_prefill, batch_decode, create_paged_kv_cache
(prefill is batch_prefill with one sequence).

Parameters use fused projections (qkv_proj, gate_up_proj) so a decode step runs two GEMVs per
block instead of five; `convert.convert_hf_tensors` maps Hugging Face names onto them.
"""

from __future__ import annotations

from tvm import relax, te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from . import fast_math
from .llama_config import LlamaConfig
from .convert import HALF_FORMATS
from .half import HalfEmbedding, HalfLinear
from .quant import QuantEmbedding, QuantLinear
from .rope import apply_rope


def _linear(cfg: LlamaConfig, in_features: int, out_features: int, fmt: str, bias: bool = False,
            residual: bool = False) -> nn.Module:
    """A dense nn.Linear, or a QuantLinear that keeps its weight packed (models/quant.py);
    `residual`: its int8 kernel carries the activations as two int8 digits."""
    if fmt == "f32":
        return nn.Linear(in_features, out_features, bias=bias)
    if fmt in HALF_FORMATS:
        return HalfLinear(in_features, out_features, fmt, bias=bias)
    return QuantLinear(in_features, out_features, fmt, bias=bias, interleave_rows=cfg.interleave_rows, residual=residual)


def _format(cfg: LlamaConfig, name: str) -> str:
    """The format planned for decoder linear `name`: the model's linear format unless listed per
    tensor (a GGUF file mixes block types, weights/gguf_blocks.py)."""
    return cfg.linear_formats.get(name, cfg.linear_format)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer_id: int):
        self.cfg = cfg
        # Sliding-window layers pass a negative softmax scale: the CPU attention kernels take it as
        # "mask keys more than cfg.sliding_window positions back" (models/cpu_attention.py).
        self.sliding = layer_id in cfg.sliding_layers
        self.sm_scale = (cfg.attn_scale or cfg.head_dim**-0.5) * (-1.0 if self.sliding else 1.0)
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        qkv_rows = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        prefix = f"model.layers.{layer_id}.self_attn"
        self.qkv_proj = _linear(cfg, cfg.hidden_size, qkv_rows, _format(cfg, f"{prefix}.qkv_proj.weight"), bias=cfg.attention_bias)
        self.o_proj = _linear(cfg, self.num_heads * self.head_dim, cfg.hidden_size, _format(cfg, f"{prefix}.o_proj.weight"))
        self.qk_norm = cfg.qk_norm
        self.kv_dtype = cfg.kv_dtype
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(cfg.head_dim, -1, cfg.rms_norm_eps, bias=False)
            self.k_norm = nn.RMSNorm(cfg.head_dim, -1, cfg.rms_norm_eps, bias=False)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = op.reshape(self.qkv_proj(x), (b, s, h + 2 * kvh, d))
        if self.qk_norm:
            q, k, v = op.split(qkv, [h, h + kvh], axis=2)
            qkv = op.concat([self.q_norm(q), self.k_norm(k), v], dim=2)
        if self.cfg.rope_in_model:  # per-layer rope (models/rope.py); the KV cache applies none
            qkv = apply_rope(self.cfg, self.sliding, qkv, kv_cache.get_query_positions(b * s))
        # Otherwise rope is applied inside the KV cache (RopeMode.NORMAL), on q and k, before caching k.
        # A KV cache in another dtype (a float16 cache for a float32 model: half the KV bytes) takes
        # and returns its own dtype; casts only then, so the float32 graph has no identity casts.
        cast = self.kv_dtype != qkv.dtype
        out = kv_cache.attention_with_fused_qkv(layer_id, qkv.astype(self.kv_dtype) if cast else qkv, h, sm_scale=self.sm_scale)
        if cast:
            out = out.astype(qkv.dtype)
        return self.o_proj(op.reshape(out, (b, s, h * d)))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer_id: int):
        self.intermediate_size = cfg.intermediate_size
        self.act = cfg.hidden_act
        prefix = f"model.layers.{layer_id}.mlp"
        self.gate_up_proj = _linear(cfg, cfg.hidden_size, 2 * cfg.intermediate_size, _format(cfg, f"{prefix}.gate_up_proj.weight"))
        # act(gate) * up is the least uniform activation: one int8 digit costs most of the KL there
        self.down_proj = _linear(cfg, cfg.intermediate_size, cfg.hidden_size, _format(cfg, f"{prefix}.down_proj.weight"),
                                 residual=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(_act_mul(self.gate_up_proj(x), self.intermediate_size, self.act))


def _act_mul(gate_up: Tensor, inter: int, act: str) -> Tensor:
    """act(gate) * up from the fused [..., gate | up] projection (SwiGLU with silu, GeGLU with
    gelu_pytorch_tanh), in float32 with a sigmoid that vectorizes (models/fast_math.py; op.silu
    lowers to one expf call per lane on CPU)."""
    fn = fast_math.silu if act == "silu" else fast_math.gelu_tanh

    def compute(x: te.Tensor):
        def element(*i):
            gate = x[(*i[:-1], i[-1])].astype("float32")
            up = x[(*i[:-1], i[-1] + inter)].astype("float32")
            return (fn(gate) * up).astype(x.dtype)

        return te.compute((*x.shape[:-1], inter), element, name=f"{act}_mul")

    return op.tensor_expr_op(compute, name_hint=f"{act}_mul", args=[gate_up])


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer_id: int):
        norm = lambda: nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False)  # noqa: E731
        self.input_layernorm = norm()
        self.self_attn = Attention(cfg, layer_id)
        self.post_attention_layernorm = norm()
        self.mlp = MLP(cfg, layer_id)
        self.sandwich = cfg.sandwich_norm
        if cfg.sandwich_norm:  # Gemma: post_attention_layernorm normalizes the attention output
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        if self.sandwich:
            x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), kv_cache, layer_id))
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + self.self_attn(self.input_layernorm(x), kv_cache, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        if cfg.embed_format == "f32":
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        elif cfg.embed_format in HALF_FORMATS:
            self.embed_tokens = HalfEmbedding(cfg.vocab_size, cfg.hidden_size, cfg.embed_format)
        else:
            self.embed_tokens = QuantEmbedding(
                cfg.vocab_size, cfg.hidden_size, cfg.embed_format, cfg.interleave_rows and cfg.tie_word_embeddings
            )  # interleaved only where it serves as the lm_head
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False)

    def forward(self, x: Tensor, kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, kv_cache, layer_id)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        self.cfg = cfg
        self.model = Decoder(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = _linear(cfg, cfg.hidden_size, cfg.vocab_size, cfg.lm_head_format)
        if cfg.dtype != "float32":
            # nn modules create float32 parameters; activations and the KV cache follow the
            # parameters' dtype (rms_norm and attention accumulate in float32 internally).
            self.to(cfg.dtype)

    def _logits(self, hidden: Tensor) -> Tensor:
        if self.cfg.tie_word_embeddings:
            embed = self.model.embed_tokens
            if isinstance(embed, (QuantEmbedding, HalfEmbedding)):
                logits = embed.matmul(hidden)
            else:
                logits = op.matmul(hidden, op.permute_dims(embed.weight))
        else:
            logits = self.lm_head(hidden)
        logits = logits.astype("float32") if logits.dtype != "float32" else logits
        if (cap := self.cfg.final_logit_softcapping) is not None:
            logits = op.tanh(logits / cap) * cap
        return logits

    def embed(self, input_ids: Tensor) -> Tensor:
        embeds = self.model.embed_tokens(input_ids)
        if self.cfg.embed_scale is not None:  # Gemma: times sqrt(hidden_size), in the model's dtype
            embeds = embeds * Tensor.from_scalar(self.cfg.embed_scale, embeds.dtype)
        return embeds

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self._logits(self.model(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embeds, paged_kv_cache)
        hidden = op.take(hidden, logit_positions, axis=1)
        return self._logits(hidden), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache):
        return self._logits(self.model(input_embeds, paged_kv_cache)), paged_kv_cache

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        cfg = self.cfg
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=relax.ShapeExpr([0, cfg.num_hidden_layers]),
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            qk_head_dim=cfg.head_dim,
            v_head_dim=cfg.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NONE if cfg.rope_in_model else RopeMode.NORMAL,
            rope_scale=1,
            rope_theta=cfg.rope_theta,
            rope_scaling={} if cfg.rope_in_model else cfg.rope_scaling or {},
            rope_ext_factors=relax.prim_value(0),
            rotary_dim=cfg.head_dim,
            enable_disaggregation=False,
            dtype=cfg.kv_dtype,
            target=_current_target(),
            # inert in TVM's cache (every layer is "mha"); read by our CPU kernels as the window
            # of the layers that pass a negative sm_scale (models/cpu_attention.py)
            layer_sliding_window_size=cfg.sliding_window or 1024,
        )

    def get_default_spec(self) -> nn.spec.ModuleSpec:
        h, dtype = self.cfg.hidden_size, self.cfg.dtype
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        spec = {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "decode": {
                "input_embed": nn.spec.Tensor([1, 1, h], dtype),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_prefill": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", h], dtype),
                "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_decode": {
                "input_embeds": nn.spec.Tensor(["batch_size", 1, h], dtype),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "create_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
        }
        return nn.spec.ModuleSpec.from_raw(spec, self)


def _current_target():
    from tvm.target import Target

    target = Target.current()
    if target is None:
        raise RuntimeError("create_paged_kv_cache must be exported inside `with Target(...)`")
    return target
