"""Shared fixtures: one compile cache per test run, each test model built and compiled once.

TVMLM_TEST_CACHE_DIR, when set, keeps the compile cache across runs (handy locally); CI uses a
fresh directory per run so every run exercises the cold path once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def tvmlm_cache_dir(tmp_path_factory) -> Path:
    """Point tvmlm's compile cache at a per-run directory (or TVMLM_TEST_CACHE_DIR)."""
    path = Path(os.environ.get("TVMLM_TEST_CACHE_DIR") or tmp_path_factory.mktemp("tvmlm-cache"))
    old = os.environ.get("TVMLM_CACHE_DIR")
    os.environ["TVMLM_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TVMLM_CACHE_DIR", None)
    else:
        os.environ["TVMLM_CACHE_DIR"] = old


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
# Tiny model variants used across test files: name -> make_hf_model kwargs.
TINY_MODELS = {
    # Llama 3.x rope scaling (its GGUF carries it as rope_freqs.weight)
    "llama": dict(arch="llama", config_overrides={"rope_parameters": LLAMA3_ROPE}),
    # a bfloat16 checkpoint: weights kept in 16 bits (models/half.py), the tied lm_head too
    "llama-tied": dict(arch="llama", tie=True, dtype="bfloat16"),
    # sliding windows shorter than the tests' sequences: on layer 1 of 2 (Qwen2), on all (Mistral)
    "qwen2": dict(arch="qwen2", tie=True, config_overrides=dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    "qwen3": dict(arch="qwen3"),
    "mistral": dict(arch="mistral", config_overrides=dict(sliding_window=8)),
    # Gemma 3: sliding / global layers (window 6), local and global rope bases (linear scaling on
    # the global one), GeGLU, q/k norms, (1 + w) sandwich norms, scaled embeddings
    "gemma3": dict(arch="gemma3", layers=3, tie=True, config_overrides=dict(
        sliding_window=6, sliding_window_pattern=2, query_pre_attn_scalar=32,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    # Phi-3: fused qkv and gate_up, longrope factors, partial rotary dims, a sliding window on all layers
    "phi3": dict(arch="phi3", config_overrides=dict(
        sliding_window=8, original_max_position_embeddings=512,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                         "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5], "long_factor": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]})),
    # Rows of 256 and 512 values: the K-quants' super-block (test_quant.py's mixed-type GGUF)
    "llama-256": dict(arch="llama", hidden_size=256, intermediate_size=512),
    # A 4096-token window for the scheduler tests' 2000-token prompts.
    "llama-4k": dict(arch="llama", max_position_embeddings=4096, seed=1),
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: name in TINY_MODELS -> HF directory (built once per session)."""
    from tvmlm.testing import make_hf_model

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_hf_model(out_dir=tmp_path_factory.mktemp(f"hf-{name}"), **TINY_MODELS[name])
        return made[name]

    return get


@pytest.fixture(scope="session")
def tiny_package(tiny_model_dir, tvmlm_cache_dir):
    """Factory: name -> compiled tvmlm package (tvmlm.compile.Package), compiled once per session."""
    from tvmlm.compile import prepare_package

    made = {}

    def get(name: str):
        if name not in made:
            made[name] = prepare_package(tiny_model_dir(name), "cpu", progress=False)
        return made[name]

    return get


@pytest.fixture(scope="module")
def pkg(tiny_package):
    """The tiny llama's compiled package directory, for the `_core` tests."""
    return tiny_package("llama").path


@pytest.fixture(scope="module")
def reference(pkg):
    """Greedy tokens of a prompt as `_core.Model` computes them alone (checked against
    transformers in test_core_model.py)."""
    from test_core_model import greedy_reference

    return greedy_reference(pkg, 1024, 512)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from tvmlm.testing import smollm2_gguf_path

    return Path(smollm2_gguf_path())


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_path, tvmlm_cache_dir):
    """One SmolLM2 engine shared by the tests that need the real model (4 sequences)."""
    from tvmlm import Engine

    engine = Engine(smollm2_path, device="cpu", mode="local")
    yield engine
    engine.terminate()


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir, tvmlm_cache_dir):
    """One engine on the tiny llama, shared by the API tests."""
    from tvmlm import Engine, EngineConfig

    engine = Engine(tiny_model_dir("llama"), device="cpu", engine_config=EngineConfig(max_num_sequence=8))
    yield engine
    engine.terminate()


# ---- test tiers (markers declared in pyproject.toml) -----------------------------------------
# unit: no compile; engine: compiles (tiny models sharing the session cache, or kernels); slow: the
# real model, transformers parity on it, the C++ host build, the benchmark. A test's own marker
# wins; otherwise the fixtures it uses decide, then its file's default below, else unit.
TIERS = ("unit", "engine", "slow")
# ("smollm2": the module fixtures of test_weights.py / test_tokenizer.py that load the real GGUF)
_FIXTURE_TIERS = {"smollm2": "slow", "smollm2_engine": "slow", "smollm2_path": "slow", "tiny_engine": "engine",
                  "tiny_package": "engine"}
_FILE_TIERS = {
    "test_bench.py": "slow",
    "test_cpp_host.py": "slow",
    "test_compile_cache.py": "engine",
    "test_core_delta_router.py": "engine",
    "test_core_engine.py": "engine",
    "test_core_engine_lifecycle.py": "engine",
    "test_core_model.py": "engine",
    "test_cpu_attention.py": "engine",
    "test_cpu_int8_matmul.py": "engine",
    "test_cpu_norm.py": "engine",
    "test_cpu_rope.py": "engine",
    "test_cuda_codegen.py": "engine",
    "test_cuda_pipeline.py": "engine",
    "test_cuda_tensor_cores.py": "engine",
    "test_quant.py": "engine",
    "test_fast_math.py": "engine",
    "test_scheduler.py": "engine",
}


def _tier(item) -> str:
    own = [m.name for m in item.iter_markers() if m.name in TIERS]
    if own:
        return own[0]
    fixtures = getattr(item, "fixturenames", ())
    for rank in ("slow", "engine"):
        if any(_FIXTURE_TIERS.get(f) == rank for f in fixtures):
            return rank
    return _FILE_TIERS.get(item.path.name, "unit")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = _tier(item)
        if not any(m.name == tier for m in item.iter_markers()):
            item.add_marker(getattr(pytest.mark, tier))
