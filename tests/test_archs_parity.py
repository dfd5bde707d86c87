"""Greedy parity with transformers per architecture, from Hugging Face directories and from GGUF
files of the same weights (written the way llama.cpp's converter writes them). An HF directory and
its GGUF share one compiled library (the cache keys on the graph's config), so each architecture
compiles once. Float32 weights, exact float paths."""

import numpy as np
import pytest

from test_core_model import TOL, hf_greedy, hf_model, new_model
from tvmlm.testing.greedy import core_greedy

PROMPT = [1, 17, 300, 42, 42, 7, 599, 123, 5]


@pytest.fixture(scope="session")
def gguf_package(tiny_model_dir, tiny_package, tmp_path_factory):
    """Factory: (name in TINY_MODELS, vocab) -> the compiled package of its F32 GGUF."""
    from tvmlm.compile import prepare_package
    from tvmlm.testing import make_gguf_model

    made = {}

    def get(name: str, vocab: str = "bpe"):
        if (name, vocab) not in made:
            hf_pkg = tiny_package(name)
            path = make_gguf_model(tiny_model_dir(name), tmp_path_factory.mktemp(f"gguf-{name}") / "m.gguf", vocab=vocab)
            pkg = prepare_package(path, "cpu", progress=False)
            # the GGUF's config is the HF directory's: same library, nothing compiled again
            assert not pkg.compiled and (pkg.path / "lib.so").resolve() == (hf_pkg.path / "lib.so").resolve()
            made[name, vocab] = pkg
        return made[name, vocab]

    return get


def _assert_greedy_equal(pkg_path, hf_dir, steps=24, prompt=PROMPT):
    ref_logits, ref_tokens = hf_greedy(hf_model(hf_dir), prompt, steps)
    m = new_model(pkg_path)
    m.add_sequence(0)
    logits, tokens = core_greedy(m, 0, list(prompt), steps)
    assert tokens == ref_tokens
    assert np.max(np.abs(logits - ref_logits)) <= TOL


@pytest.mark.parametrize("name", ["llama", "gemma3", "phi3"])
def test_gguf_with_sentencepiece_vocab_matches_transformers(gguf_package, tiny_model_dir, name):
    """GGUFs as llama.cpp writes them, with SentencePiece vocabularies: Llama 3.x (rope scaling only
    as rope_freqs.weight), Gemma 3 (norms stored as 1 + w, sliding-window pattern and window in the
    metadata, linear rope scaling of the global layers), Phi-3 (fused attn_qkv and ffn_up, longrope
    factors as rope_factors_long / short, partial rotary dims). Greedy tokens equal transformers'
    on the HF directory, past the sliding window."""
    pkg = gguf_package(name, vocab="spm")
    assert pkg.metadata["vocab_size"] == 611
    _assert_greedy_equal(pkg.path, tiny_model_dir(name))


@pytest.mark.parametrize("name, reason", [("mistral", "sliding-window attention"), ("phi3", "sliding-window"),
                                          ("gemma3", "sliding-window")])
def test_cpu_only_features_are_refused_before_compiling(tiny_model_dir, tvmlm_cache_dir, name, reason):
    """Sliding windows and model-side rope have CPU kernels only: another target is refused when
    the model is opened, with the reason, and nothing is compiled."""
    from tvmlm.compile import prepare_package

    libs = lambda: set((tvmlm_cache_dir / "libs").glob("*"))  # noqa: E731
    before = libs()
    with pytest.raises(ValueError, match=f"{reason}.*runs on cpu only, not cuda"):
        prepare_package(tiny_model_dir(name), "cuda", progress=False)
    assert libs() == before
