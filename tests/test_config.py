"""Engine config: validation, mode presets, memory estimate, user overrides, OOM messages.

Expected numbers are worked out by hand from the formulas in tvmlm/config.py for this fake model:
    KV bytes/token = 2 * 4 layers * 2 kv heads * 64 head_dim * 2 (float16) = 2048
    workspace      = 512 chunk * (1000 vocab + 16 * 256 hidden) * 4 = 512 * 5096 * 4 = 10_436_608
    params         = 100 MiB = 104_857_600
"""

from __future__ import annotations

import dataclasses

import pytest

from tvmlm.config import (EngineConfig, ResolvedConfig, format_bytes, format_resolved_config,
                          resolve_engine_config)
from tvmlm.errors import ConfigError, ModelError, OutOfMemoryError

MiB, GiB = 1 << 20, 1 << 30

META = {
    "context_window_size": 4096, "num_hidden_layers": 4, "num_key_value_heads": 2, "head_dim": 64,
    "kv_dtype": "float16", "params_bytes": 100 * MiB, "hidden_size": 256, "vocab_size": 1000,
    "prefill_chunk_size": 512, "max_batch_size": 32,
}
# cuda, 1 GiB: budget = int(0.85 * 1 GiB) = 912_680_550;
#   cap = (912_680_550 - 104_857_600 - 10_436_608) // 2048 = 389_348 -> 389_344 (pages of 16)
GPU_CAP = 389_344
# cpu, 232 MiB available: budget = 0.5 * 243_269_632 = 121_634_816;
#   cap = (121_634_816 - 104_857_600 - 10_436_608) // 2048 = 3096 -> 3088
SMALL_CPU = 232 * MiB
SMALL_CPU_CAP = 3088


def resolve(mode, user=None, device="cuda", memory=GiB, meta=META):
    return resolve_engine_config(mode, user, meta, device, memory, cpu_count_fn=lambda: 6)


def numbers(r: ResolvedConfig) -> tuple[int, int, int]:
    return r.max_num_sequence, r.max_total_sequence_length, r.prefill_chunk_size


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

def test_memory_estimate_on_gpu():
    r, _ = resolve("local")
    assert r.kv_bytes_per_token == 2048
    assert r.workspace_bytes == 10_436_608
    assert r.memory_budget_bytes == 912_680_550
    assert r.cap_tokens == GPU_CAP
    assert r.gpu_memory_utilization == 0.85 and r.kv_dtype == "float16"


def test_local_preset_on_gpu():
    r, src = resolve("local")
    # min(4, 32) sequences; total min(cap, 4096 ctx, 8192) = 4096; chunk min(512, 4096, 4096)
    assert numbers(r) == (4, 4096, 512)
    assert src["max_num_sequence"] == src["max_total_sequence_length"] == "preset"
    assert r.kv_cache_bytes == 4096 * 2048


def test_interactive_preset_on_gpu():
    r, src = resolve("interactive")
    assert numbers(r) == (1, 4096, 512)
    assert src["max_total_sequence_length"] == "preset"


def test_server_preset_on_gpu():
    r, src = resolve("server")
    # sequences min(32, max(1, 389_344 // min(4096, 4096) = 95)) = 32; total min(cap, 32 * 4096)
    assert numbers(r) == (32, 131_072, 512)
    assert src["max_num_sequence"] == "preset" and src["max_total_sequence_length"] == "preset"


def test_presets_when_memory_binds_on_cpu():
    r, src = resolve("local", device="cpu", memory=SMALL_CPU)
    assert r.memory_budget_bytes == 121_634_816 and r.cap_tokens == SMALL_CPU_CAP
    assert r.gpu_memory_utilization == 0.5
    assert numbers(r) == (4, 3088, 512)
    assert src["max_total_sequence_length"] == "memory estimate"

    r, _ = resolve("interactive", device="cpu", memory=SMALL_CPU)
    assert numbers(r) == (1, 3088, 512)

    r, src = resolve("server", device="cpu", memory=SMALL_CPU)
    # sequences max(1, 3088 // 4096 = 0) = 1; total min(3088, 1 * 4096)
    assert numbers(r) == (1, 3088, 512)
    assert src["max_num_sequence"] == src["max_total_sequence_length"] == "memory estimate"


def test_server_sequences_from_memory():
    # cuda, 300 MiB: budget int(0.85 * 300 MiB) = 267_386_880;
    # cap = (267_386_880 - 104_857_600 - 10_436_608) // 2048 = 74_264 -> 74_256;
    # sequences min(32, 74_256 // 4096 = 18) = 18; total min(74_256, 18 * 4096 = 73_728)
    r, src = resolve("server", memory=300 * MiB)
    assert r.cap_tokens == 74_256
    assert numbers(r) == (18, 73_728, 512)
    assert src["max_num_sequence"] == "memory estimate"
    assert src["max_total_sequence_length"] == "preset"


def test_prefill_chunk_is_limited_by_context_except_in_server():
    meta = {**META, "context_window_size": 256, "prefill_chunk_size": 1024}
    # workspace = 1024 * 5096 * 4 = 20_873_216; cap on 1 GiB cuda is large.
    r, src = resolve("local", meta=meta)
    assert numbers(r) == (4, 256, 256) and src["prefill_chunk_size"] == "preset"
    r, _ = resolve("server", meta=meta)
    # 32 sequences of 256 = 8192 total; the chunk may pack several sequences: min(1024, 8192)
    assert numbers(r) == (32, 8192, 1024)


def test_chunk_follows_a_memory_bound_total():
    meta = {**META, "prefill_chunk_size": 2048, "context_window_size": 8192}
    # workspace = 2048 * 5096 * 4 = 41_746_432; cpu 284 MiB: budget 148_897_792;
    # cap = (148_897_792 - 104_857_600 - 41_746_432) // 2048 = 1120
    r, src = resolve("local", meta=meta, device="cpu", memory=284 * MiB)
    assert r.cap_tokens == 1120
    assert numbers(r) == (4, 1120, 1120)  # chunk min(2048, 1120, 8192)
    assert src["max_total_sequence_length"] == src["prefill_chunk_size"] == "memory estimate"


def test_num_threads():
    r, src = resolve("local", device="cpu", memory=SMALL_CPU)
    assert r.num_threads == 6 and src["num_threads"] == "preset"
    r, src = resolve("local", EngineConfig(num_threads=3), device="cpu", memory=SMALL_CPU)
    assert r.num_threads == 3 and src["num_threads"] == "user"
    r, _ = resolve("local")
    assert r.num_threads == 0  # accelerators: the runtime's default


# ---------------------------------------------------------------------------------------------
# User overrides
# ---------------------------------------------------------------------------------------------

def test_user_fields_win_and_are_sourced_user():
    user = EngineConfig(max_num_sequence=8, max_total_sequence_length=2048, prefill_chunk_size=128,
                        gpu_memory_utilization=0.5, kv_dtype="float32", num_threads=2)
    r, src = resolve("server", user)
    assert numbers(r) == (8, 2048, 128)
    assert (r.gpu_memory_utilization, r.kv_dtype, r.num_threads) == (0.5, "float32", 2)
    assert r.kv_bytes_per_token == 4096  # float32 KV
    assert r.workspace_bytes == 128 * 5096 * 4  # the user's chunk sizes the workspace
    assert all(src[f] == "user" for f in ("max_num_sequence", "max_total_sequence_length",
                                          "prefill_chunk_size", "gpu_memory_utilization",
                                          "kv_dtype", "num_threads"))
    assert src["prefix_cache"] == "preset" and r.prefix_cache is True
    off, src = resolve("local", EngineConfig(prefix_cache=False))
    assert off.prefix_cache is False and src["prefix_cache"] == "user"
    assert off.core_config("/pkg")["prefix_cache"] is False


def test_user_total_shapes_derived_fields():
    r, src = resolve("local", EngineConfig(max_total_sequence_length=256))
    assert numbers(r) == (4, 256, 256)  # chunk min(512, 256, 4096)
    assert src["prefill_chunk_size"] == "preset"  # derived (from the user's total), not user-set
    r, src = resolve("server", EngineConfig(max_num_sequence=3))
    assert numbers(r) == (3, 3 * 4096, 512)
    assert src["max_num_sequence"] == "user" and src["max_total_sequence_length"] == "preset"


def test_user_utilization_changes_the_budget():
    r, src = resolve("interactive", EngineConfig(gpu_memory_utilization=1.0), device="cpu",
                     memory=SMALL_CPU)
    # budget 243_269_632; cap = (243_269_632 - 115_294_208) // 2048 = 62_488 -> 62_480
    assert r.cap_tokens == 62_480 and numbers(r) == (1, 4096, 512)
    assert src["gpu_memory_utilization"] == "user"


def test_user_total_over_cap_is_out_of_memory():
    with pytest.raises(OutOfMemoryError) as info:
        resolve("local", EngineConfig(max_total_sequence_length=4000), device="cpu",
                memory=SMALL_CPU)
    msg = str(info.value)
    # needs 104_857_600 + 10_436_608 + 4000 * 2048 = 123_486_208 B = 117.8 MiB; budget 116.0 MiB
    assert "max_total_sequence_length=4000" in msg
    assert "117.8 MiB" in msg and "116.0 MiB" in msg and "232.0 MiB available on cpu" in msg
    assert "Lower max_total_sequence_length" in msg and "quantized" in msg
    assert isinstance(info.value, MemoryError)


def test_derived_cache_below_floor_is_out_of_memory():
    # cpu 220 MiB: budget 115_343_360; cap = (115_343_360 - 115_294_208) // 2048 = 24 -> 16,
    # below min(4096, 512) = 512 tokens.
    with pytest.raises(OutOfMemoryError) as info:
        resolve("server", device="cpu", memory=220 * MiB)
    msg = str(info.value)
    # needs params + workspace + 512 * 2048 = 116_342_784 B = 111.0 MiB; budget 110.0 MiB
    assert "512-token KV cache in server mode" in msg
    assert "111.0 MiB" in msg and "110.0 MiB" in msg and "params 100.0 MiB" in msg
    assert "prefill_chunk_size" in msg and "gpu_memory_utilization" in msg and "smaller" in msg


def test_explicit_small_total_is_allowed_below_the_derived_floor():
    r, src = resolve("local", EngineConfig(max_total_sequence_length=16), device="cpu",
                     memory=220 * MiB)
    assert numbers(r) == (4, 16, 16) and src["max_total_sequence_length"] == "user"


def test_params_larger_than_budget():
    with pytest.raises(OutOfMemoryError, match="params 2.0 GiB"):
        resolve("interactive", meta={**META, "params_bytes": 2 * GiB})


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, expected", [
    ({"max_num_sequence": 0}, ["max_num_sequence=0", ">= 1"]),
    ({"max_num_sequence": True}, ["max_num_sequence=True", "integer"]),
    ({"max_num_sequence": "4"}, ["max_num_sequence='4'", "integer >= 1"]),
    ({"max_total_sequence_length": 8}, ["max_total_sequence_length=8", ">= 16"]),
    ({"prefill_chunk_size": 0}, ["prefill_chunk_size=0", ">= 1"]),
    ({"num_threads": -1}, ["num_threads=-1", ">= 1"]),
    ({"gpu_memory_utilization": 0}, ["gpu_memory_utilization=0", "(0, 1]"]),
    ({"gpu_memory_utilization": 1.2}, ["gpu_memory_utilization=1.2", "(0, 1]"]),
    ({"gpu_memory_utilization": float("nan")}, ["gpu_memory_utilization=nan", "(0, 1]"]),
    ({"kv_dtype": "int8"}, ["kv_dtype='int8'", "'float32'", "'float16'", "'bfloat16'"]),
    ({"prefix_cache": "yes"}, ["prefix_cache='yes'", "True", "False"]),
    ({"quantization": "q3_k"}, ["quantization='q3_k'", "'none'", "'q4_1'", "'q8_0'"]),
    ({"prefill_chunk_size": 4096, "max_total_sequence_length": 2048},
     ["prefill_chunk_size=4096", "max_total_sequence_length (2048)"]),
])
def test_engine_config_validation(kw, expected):
    with pytest.raises(ConfigError) as info:
        EngineConfig(**kw)
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


def test_invalid_mode_lists_modes():
    with pytest.raises(ConfigError) as info:
        resolve("fast")
    assert all(m in str(info.value) for m in ("'fast'", "'local'", "'interactive'", "'server'"))


def test_checks_against_the_model():
    with pytest.raises(ConfigError, match=r"max_num_sequence=64 .*\[1, 32\]"):
        resolve("server", EngineConfig(max_num_sequence=64))
    with pytest.raises(ConfigError, match=r"prefill_chunk_size=2048 .*<= max_total_sequence_leng"):
        resolve("interactive", EngineConfig(prefill_chunk_size=2048),
                meta={**META, "context_window_size": 1024})
    with pytest.raises(ModelError, match="head_dim, vocab_size"):
        resolve("local", meta={k: v for k, v in META.items()
                               if k not in ("head_dim", "vocab_size")})
    with pytest.raises(ModelError, match="kv_dtype"):
        resolve("local", meta={**META, "kv_dtype": "q4"})
    with pytest.raises(ConfigError, match="engine_config"):
        resolve("local", {"max_num_sequence": 2})


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

def test_log_line_names_every_number_and_its_source():
    r, src = resolve("local", EngineConfig(prefill_chunk_size=128), device="cpu", memory=SMALL_CPU)
    line = format_resolved_config(r, src)
    assert "\n" not in line
    for part in ("mode=local", "device=cpu", "max_num_sequence=4 (preset)",
                 "prefill_chunk_size=128 (user)", "gpu_memory_utilization=0.5 (preset)",
                 "kv_dtype=float16 (preset)", "num_threads=6 (preset)", "2048 B/token",
                 f"KV cap {r.cap_tokens} tokens", "232.0 MiB available"):
        assert part in line, (part, line)
    assert f"max_total_sequence_length={r.max_total_sequence_length} (" in line


def test_core_config_matches_the_contract():
    r, _ = resolve("local")
    assert r.core_config("/pkg") == {"model": "/pkg", "max_num_sequence": 4,
                                     "max_total_sequence_length": 4096, "prefill_chunk_size": 512,
                                     "num_threads": 0, "prefix_cache": True}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.max_num_sequence = 9


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 * MiB, 3 * GiB, 3000 * GiB)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 GiB", "3000.0 GiB"]


def test_python_limits_are_the_cores():
    """Numbers both layers use are defined in C++; the Python copies must be the same numbers."""
    from tvmlm import _core, config, protocol

    assert config.PAGE_SIZE == _core.KV_PAGE_SIZE
    assert protocol.MAX_TOP_LOGPROBS == _core.MAX_TOP_LOGPROBS
