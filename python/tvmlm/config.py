"""Engine configuration: user overrides + a mode preset + a memory estimate -> resolved numbers.

`EngineConfig` holds what the user set (None = derive it). `resolve_engine_config` derives the
rest from the mode, the model's metadata and the device's memory, and returns, for each field,
where its value came from ("user", "preset" or "memory estimate"), so the one INFO log line
(`format_resolved_config`) always agrees with what the engine runs with.

Memory model (all in bytes):

    kv_bytes_per_token = 2 (K and V) * layers * kv_heads * head_dim * kv_dtype_bytes
    workspace          = prefill_chunk * (vocab_size + 16 * hidden_size) * 4
    budget             = available * utilization
    cap_tokens         = (budget - params_bytes - workspace) // kv_bytes_per_token,
                         rounded down to whole pages of 16 tokens

The workspace term is the float32 temporaries of one prefill chunk: a logits row per token (the
upper bound when every position's logits are asked for) plus ~16 hidden-size activations per token
(residual, norm output, q/k/v, attention output and the MLP's gate/up/activation, which run about
3x hidden each). It uses the model's (or the user's) prefill chunk, which bounds the resolved one.

Utilization defaults: 0.85 on GPUs (of the device's total memory, as MLC does), 0.5 on cpu (of the
RAM *available* now). On a CPU the same RAM also holds the OS, the Python process, the safetensors
file while it is read and the page cache, the "available" figure moves as other programs run, and
over-committing it swaps (a slow hang) instead of failing cleanly; half of it leaves that room.
`gpu_memory_utilization` keeps MLC's name but applies to cpu RAM too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .devices import host_cpu_count
from .errors import ConfigError, ModelError, OutOfMemoryError
from .models.packed import QUANTIZATIONS

MODES = ("local", "interactive", "server")
KV_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
PAGE_SIZE = 16  # tokens per KV page: the core's Model::kPageSize (_core.KV_PAGE_SIZE, tested equal)

DEFAULT_UTILIZATION = {"cpu": 0.5, "gpu": 0.85}
LOCAL_MAX_SEQUENCES = 4
LOCAL_MAX_TOTAL_LENGTH = 8192
# Server mode plans for sequences of this many tokens on average (capped by the context window)
# when sizing the batch: long enough for chat turns with history, short enough to batch well.
# Sequences that outgrow the average are preempted and recomputed by the C++ engine, never OOM.
SERVER_TOKENS_PER_SEQUENCE = 4096
# A derived KV cache smaller than min(context window, this) is refused: chat templates and system
# prompts alone take hundreds of tokens. An explicit, smaller max_total_sequence_length is allowed.
MIN_USEFUL_TOKENS = 512
WORKSPACE_HIDDEN_ACTIVATIONS = 16

SOURCE_USER = "user"
SOURCE_PRESET = "preset"
SOURCE_MEMORY = "memory estimate"

REQUIRED_META = (
    "context_window_size", "num_hidden_layers", "num_key_value_heads", "head_dim",
    "params_bytes", "hidden_size", "vocab_size", "prefill_chunk_size", "max_batch_size",
)


_INT32_MAX = 2**31 - 1  # the core's sizes are 32-bit


def _check_int(name: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _INT32_MAX:
        raise ConfigError.bad_value(name, value, f"an integer >= {minimum} (at most {_INT32_MAX}), or None to derive it")


@dataclass(frozen=True)
class EngineConfig:
    """What the user asks for. Every field is optional: None means "derive it from the mode".

    max_num_sequence: sequences decoded together (>= 1, <= the library's max_batch_size).
    max_total_sequence_length: KV cache size in tokens over all sequences (>= 16, one page).
    prefill_chunk_size: most prompt tokens run in one prefill step (>= 1, <= the total length).
    gpu_memory_utilization: fraction in (0, 1] of device memory to plan with (cpu: available RAM).
    num_threads: CPU compute threads (>= 1); default: physical cores we may run on.
    prefix_cache: reuse the KV of shared token prefixes (system prompts, earlier chat turns) by
        forking it from cached or running sequences; default True.
    kv_dtype: KV cache dtype, one of float32/float16/bfloat16; default: the model's, except that
        quantized weights (GGUF Q4/Q8, `quantization`) on a CPU with AVX-512 BF16 get "bfloat16".
        A 2-byte cache halves the KV memory and the bytes batched decode reads (llama.cpp defaults
        to float16). With "bfloat16" on such CPUs, prefill attention multiplies in bfloat16
        (float32 sums); otherwise attention computes in float32. Applied when the model is compiled.
    quantization: weights kept group-quantized (32-element blocks, float16 scales, llama.cpp's
        layouts): "q4_1" (linears 4-bit, embeddings q8_0) or "q8_0"; "none" keeps float weights.
        Default: a GGUF's quantized tensors stay packed, each in its own layout (Q4_0/Q4_1/Q4_K
        as q4_1, other types as q8_0), float weights stay float.
        Applied when the model is compiled (part of the compile cache key).
    """

    max_num_sequence: int | None = None
    max_total_sequence_length: int | None = None
    prefill_chunk_size: int | None = None
    gpu_memory_utilization: float | None = None
    num_threads: int | None = None
    prefix_cache: bool | None = None
    kv_dtype: str | None = None
    quantization: str | None = None

    def __post_init__(self) -> None:
        _check_int("max_num_sequence", self.max_num_sequence, 1)
        _check_int("max_total_sequence_length", self.max_total_sequence_length, PAGE_SIZE)
        _check_int("prefill_chunk_size", self.prefill_chunk_size, 1)
        _check_int("num_threads", self.num_threads, 1)
        u = self.gpu_memory_utilization
        number = isinstance(u, (int, float)) and not isinstance(u, bool) and not math.isnan(u)
        if u is not None and not (number and 0 < u <= 1):
            raise ConfigError.bad_value("gpu_memory_utilization", u, "a number in (0, 1], or None")
        if self.prefix_cache is not None and not isinstance(self.prefix_cache, bool):
            raise ConfigError.bad_value("prefix_cache", self.prefix_cache, [True, False, None])
        if self.quantization is not None and not (isinstance(self.quantization, str) and self.quantization in QUANTIZATIONS):
            raise ConfigError.bad_value("quantization", self.quantization, list(QUANTIZATIONS) + [None])
        if self.kv_dtype is not None and not (isinstance(self.kv_dtype, str) and self.kv_dtype in KV_DTYPE_BYTES):
            raise ConfigError.bad_value("kv_dtype", self.kv_dtype, list(KV_DTYPE_BYTES) + [None])
        if (
            self.prefill_chunk_size is not None
            and self.max_total_sequence_length is not None
            and self.prefill_chunk_size > self.max_total_sequence_length
        ):
            # Both explicit and contradictory: refuse rather than silently override one of them.
            raise ConfigError(
                f"prefill_chunk_size={self.prefill_chunk_size} is invalid: expected an integer <= "
                f"max_total_sequence_length ({self.max_total_sequence_length})"
            )


@dataclass(frozen=True)
class ResolvedConfig:
    """The numbers the engine runs with, plus the memory estimate behind them (bytes)."""

    mode: str
    device_kind: str
    max_num_sequence: int
    max_total_sequence_length: int
    prefill_chunk_size: int
    gpu_memory_utilization: float
    num_threads: int
    prefix_cache: bool
    kv_dtype: str
    # The estimate, for logs and error messages.
    available_memory_bytes: int
    memory_budget_bytes: int
    params_bytes: int
    workspace_bytes: int
    kv_bytes_per_token: int
    cap_tokens: int

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes the KV cache takes at the resolved max_total_sequence_length."""
        return self.max_total_sequence_length * self.kv_bytes_per_token

    def core_config(self, model_dir: str) -> dict:
        """The `ThreadedEngine.reload` config dict of docs/contracts.md (json.dumps it)."""
        return {
            "model": model_dir,
            "max_num_sequence": self.max_num_sequence,
            "max_total_sequence_length": self.max_total_sequence_length,
            "prefill_chunk_size": self.prefill_chunk_size,
            "num_threads": self.num_threads,
            "prefix_cache": self.prefix_cache,
        }


# Fields reported in `sources` and in the log line, in that order.
RESOLVED_FIELDS = (
    "max_num_sequence", "max_total_sequence_length", "prefill_chunk_size",
    "gpu_memory_utilization", "num_threads", "prefix_cache", "kv_dtype",
)


def kv_bytes_per_token(meta: Mapping[str, Any], kv_dtype: str) -> int:
    """2 (K and V) x layers x KV heads x head_dim x dtype bytes."""
    return (2 * int(meta["num_hidden_layers"]) * int(meta["num_key_value_heads"])
            * int(meta["head_dim"]) * KV_DTYPE_BYTES[kv_dtype])


def workspace_bytes(meta: Mapping[str, Any], prefill_chunk: int) -> int:
    """float32 temporaries of one prefill chunk: logits + 16 hidden-size activations per token."""
    per_token = int(meta["vocab_size"]) + WORKSPACE_HIDDEN_ACTIVATIONS * int(meta["hidden_size"])
    return prefill_chunk * per_token * 4


def format_bytes(n: int | float) -> str:
    """Human-readable bytes with binary units: 1536 -> '1.5 KiB'."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    value, unit = float(n) / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _pick_min(*terms: tuple[int, str]) -> tuple[int, str]:
    """The smallest value and the source of the first term that attains it."""
    value = min(v for v, _ in terms)
    return value, next(s for v, s in terms if v == value)


def model_kv_dtype(meta: Mapping[str, Any]) -> str:
    """The KV cache dtype a model package was compiled with (older packages: its activations')."""
    dtype = meta.get("kv_dtype", meta.get("dtype", "float32"))
    if dtype not in KV_DTYPE_BYTES:
        raise ModelError(f"model metadata kv_dtype={dtype!r} is not one of {list(KV_DTYPE_BYTES)}")
    return dtype


def _oom(
    what: str, needed_tokens: int, kv_per_token: int, budget: int, available: int,
    utilization: float, device_kind: str, params: int, workspace: int, lower: str,
) -> OutOfMemoryError:
    need = params + workspace + needed_tokens * kv_per_token
    return OutOfMemoryError(
        f"not enough memory for {what}: it needs {format_bytes(need)} "
        f"(params {format_bytes(params)} + prefill workspace {format_bytes(workspace)} + "
        f"KV cache for {needed_tokens} tokens at {kv_per_token} B/token), but the budget is {format_bytes(budget)} "
        f"(gpu_memory_utilization {utilization:g} x {format_bytes(available)} available on "
        f"{device_kind}). Lower {lower}, or use a smaller or quantized model."
    )


def resolve_engine_config(
    mode: str,
    user_config: EngineConfig | None,
    model_meta: Mapping[str, Any],
    device_kind: str,
    available_memory_bytes: int,
    cpu_count_fn: Callable[[], int] | None = None,
) -> tuple[ResolvedConfig, dict[str, str]]:
    """Resolve the engine's numbers for `mode` on a device with `available_memory_bytes`.

    Presets (cap = the KV tokens that fit, see the module docstring; "ctx" = context window):
      local:       4 sequences (<= max_batch_size); total = min(cap, ctx, 8192)
      interactive: 1 sequence; total = min(cap, ctx)
      server:      min(max_batch_size, max(1, cap // min(ctx, 4096))) sequences;
                   total = min(cap, sequences x ctx)
      prefill chunk = min(model chunk, total, ctx); in server min(model chunk, total), because a
      batched prefill may pack several sequences into one chunk.
    User-set fields always win (source "user") but are checked: max_num_sequence <=
    max_batch_size, prefill_chunk_size <= total, total <= cap (else OutOfMemoryError). A derived
    cap below min(ctx, 512) tokens raises OutOfMemoryError with what to lower.

    `device_kind` is "cpu" or an accelerator kind; `cpu_count_fn` (default:
    `devices.host_cpu_count`) sizes num_threads on cpu. Returns (resolved, {field: source}).
    """
    if mode not in MODES:
        raise ConfigError.bad_value("mode", mode, MODES)
    user = user_config if user_config is not None else EngineConfig()
    if not isinstance(user, EngineConfig):
        raise ConfigError.bad_value("engine_config", user, "an EngineConfig or None")
    missing = [k for k in REQUIRED_META if k not in model_meta]
    if missing:
        raise ModelError(f"model metadata lacks {', '.join(missing)} (needed to size the engine)")
    is_cpu = device_kind == "cpu"
    ctx = int(model_meta["context_window_size"])
    model_chunk = int(model_meta["prefill_chunk_size"])
    max_batch = int(model_meta["max_batch_size"])
    params = int(model_meta["params_bytes"])
    sources: dict[str, str] = {}

    def user_or(field: str, default: Any, source: str = SOURCE_PRESET) -> Any:
        value = getattr(user, field)
        sources[field] = SOURCE_USER if value is not None else source
        return value if value is not None else default

    utilization = user_or("gpu_memory_utilization", DEFAULT_UTILIZATION["cpu" if is_cpu else "gpu"])
    kv_dtype = user_or("kv_dtype", model_kv_dtype(model_meta))
    prefix_cache = bool(user_or("prefix_cache", True))
    if is_cpu:
        num_threads = user_or("num_threads", (cpu_count_fn or host_cpu_count)())
    else:
        num_threads = user_or("num_threads", 0)  # 0: the runtime's default (host threads idle)

    if user.max_num_sequence is not None and user.max_num_sequence > max_batch:
        raise ConfigError.bad_value(
            "max_num_sequence", user.max_num_sequence,
            f"an integer in [1, {max_batch}] (the model library's max_batch_size)",
        )

    # Memory estimate. The workspace uses the chunk the resolved one can be at most.
    kv_per_token = kv_bytes_per_token(model_meta, kv_dtype)
    workspace = workspace_bytes(model_meta, user.prefill_chunk_size or model_chunk)
    budget = int(available_memory_bytes * utilization)
    cap = max(0, (budget - params - workspace) // kv_per_token) // PAGE_SIZE * PAGE_SIZE
    oom_args = dict(kv_per_token=kv_per_token, budget=budget, available=available_memory_bytes,
                    utilization=utilization, device_kind=device_kind, params=params,
                    workspace=workspace)

    # Sequences.
    if mode == "interactive":
        max_seq, seq_source = 1, SOURCE_PRESET
    elif mode == "local":
        max_seq, seq_source = min(LOCAL_MAX_SEQUENCES, max_batch), SOURCE_PRESET
    else:
        per_seq = min(ctx, SERVER_TOKENS_PER_SEQUENCE)
        max_seq, seq_source = _pick_min((max_batch, SOURCE_PRESET),
                                        (max(1, cap // per_seq), SOURCE_MEMORY))
    max_seq = user_or("max_num_sequence", max_seq, seq_source)

    # Total KV tokens.
    if user.max_total_sequence_length is not None:
        total = user_or("max_total_sequence_length", None)
        if total > cap:
            raise _oom(f"max_total_sequence_length={total}", total,
                       lower="max_total_sequence_length or prefill_chunk_size", **oom_args)
    else:
        floor = min(ctx, MIN_USEFUL_TOKENS)
        if cap < floor:
            raise _oom(f"a {floor}-token KV cache in {mode} mode", floor,
                       lower="prefill_chunk_size or max_total_sequence_length, raise "
                             "gpu_memory_utilization", **oom_args)
        if mode == "local":
            total, source = _pick_min((cap, SOURCE_MEMORY), (ctx, SOURCE_PRESET),
                                      (LOCAL_MAX_TOTAL_LENGTH, SOURCE_PRESET))
        elif mode == "interactive":
            total, source = _pick_min((cap, SOURCE_MEMORY), (ctx, SOURCE_PRESET))
        else:
            total, source = _pick_min((cap, SOURCE_MEMORY), (max_seq * ctx, SOURCE_PRESET))
        total = user_or("max_total_sequence_length", total, source)

    # Prefill chunk: never more than the KV cache holds.
    if user.prefill_chunk_size is not None:
        chunk = user_or("prefill_chunk_size", None)
        if chunk > total:
            raise ConfigError(
                f"prefill_chunk_size={chunk} is invalid: expected an integer <= "
                f"max_total_sequence_length ({total}, {sources['max_total_sequence_length']})"
            )
    else:
        # Bound by a user-set total it is still the preset rule: only fields the user set say "user".
        total_source = sources["max_total_sequence_length"]
        total_source = SOURCE_PRESET if total_source == SOURCE_USER else total_source
        terms = [(model_chunk, SOURCE_PRESET), (total, total_source)]
        if mode != "server":
            terms.append((ctx, SOURCE_PRESET))
        chunk = user_or("prefill_chunk_size", *_pick_min(*terms))

    resolved = ResolvedConfig(
        mode=mode, device_kind=device_kind, max_num_sequence=max_seq,
        max_total_sequence_length=total, prefill_chunk_size=chunk,
        gpu_memory_utilization=utilization, num_threads=num_threads, prefix_cache=prefix_cache,
        kv_dtype=kv_dtype, available_memory_bytes=int(available_memory_bytes),
        memory_budget_bytes=budget, params_bytes=params, workspace_bytes=workspace,
        kv_bytes_per_token=kv_per_token, cap_tokens=cap,
    )
    return resolved, {f: sources[f] for f in RESOLVED_FIELDS}


def format_resolved_config(resolved: ResolvedConfig, sources: Mapping[str, str]) -> str:
    """One INFO log line: every resolved number with its source, then the memory estimate."""
    parts = ", ".join(f"{f}={getattr(resolved, f)} ({sources[f]})" for f in RESOLVED_FIELDS)
    r = resolved
    return (
        f"tvmlm engine config: mode={r.mode}, device={r.device_kind}: {parts}; memory: "
        f"budget {format_bytes(r.memory_budget_bytes)} = {r.gpu_memory_utilization:g} x "
        f"{format_bytes(r.available_memory_bytes)} available, "
        f"params {format_bytes(r.params_bytes)}, "
        f"prefill workspace {format_bytes(r.workspace_bytes)}, KV {r.kv_bytes_per_token} B/token, "
        f"KV cap {r.cap_tokens} tokens, KV cache {format_bytes(r.kv_cache_bytes)}"
    )
