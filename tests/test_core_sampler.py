"""The C++ sampler, through the `_core._sample_tokens` test hook (same code path as the engine)."""

import json
from collections import Counter

import numpy as np
import pytest

from tvmlm import _core


def sample(logits, n=1, **config):
    return _core._sample_tokens(np.asarray(logits, dtype=np.float32).tolist(), json.dumps(config), n)


def test_greedy_is_argmax_and_ignores_seed():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.normal(size=1000)
        assert sample(logits, 5, temperature=0.0) == [int(np.argmax(logits))] * 5
        assert sample(logits, 1, temperature=0.0, seed=7) == [int(np.argmax(logits))]


def test_greedy_ties_pick_first_maximum_like_torch_argmax():
    assert sample([1.0, 3.0, 3.0, 2.0], temperature=0.0) == [1]


@pytest.mark.parametrize("vocab", [1, 15, 16, 511, 512, 513, 49152, 49157])
def test_greedy_finds_the_first_maximum_anywhere(vocab):
    """ArgMax works in 512-logit blocks of 16 lanes: maxima at block and lane edges, in the
    remainder, and ties across blocks all resolve to the first index, as numpy's argmax does."""
    rng = np.random.default_rng(vocab)
    positions = {0, vocab - 1, vocab // 2, min(vocab - 1, 511), min(vocab - 1, 512), min(vocab - 1, 15)}
    for pos in positions:
        logits = rng.normal(size=vocab).astype(np.float32) - 10
        logits[pos] = 5.0
        assert sample(logits, temperature=0.0) == [pos]
        tie = rng.integers(pos, vocab)  # the same value later: the first one still wins
        logits[tie] = 5.0
        assert sample(logits, temperature=0.0) == [int(np.argmax(logits))]
    assert sample(np.full(vocab, -3.0), temperature=0.0) == [0]


def test_top_k_1_is_greedy_even_with_temperature():
    logits = [0.1, 0.5, 0.4, 0.0]
    assert sample(logits, 50, temperature=2.0, top_k=1, seed=3) == [1] * 50


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    logits = np.random.default_rng(1).normal(size=500)
    a = sample(logits, 200, temperature=1.0, seed=1234)
    b = sample(logits, 200, temperature=1.0, seed=1234)
    c = sample(logits, 200, temperature=1.0, seed=4321)
    assert a == b
    assert a != c


def test_unseeded_sampling_varies():
    logits = np.zeros(1000)
    draws = {tuple(sample(logits, 20, temperature=1.0)) for _ in range(3)}
    assert len(draws) == 3


def test_frequencies_follow_softmax_with_temperature():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    n = 20000
    for temperature in (1.0, 0.5):
        counts = Counter(sample(logits, n, temperature=temperature, seed=99))
        p = np.exp(logits / temperature)
        p /= p.sum()
        freq = np.array([counts[i] for i in range(4)]) / n
        # 5 standard deviations of a binomial frequency.
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-9), (freq, p)


def test_top_k_restricts_to_k_most_likely():
    logits = np.array([0.0, 5.0, 1.0, 4.0, 3.0])
    draws = set(sample(logits, 2000, temperature=5.0, top_k=2, seed=5))
    assert draws == {1, 3}


def test_top_p_keeps_smallest_prefix_reaching_p():
    p = np.array([0.05, 0.4, 0.3, 0.2, 0.05])
    logits = np.log(p)
    # Sorted mass: 0.4, 0.7, 0.9 -> top_p 0.65 keeps {1, 2}; 0.85 keeps {1, 2, 3}.
    assert set(sample(logits, 3000, temperature=1.0, top_p=0.65, seed=1)) == {1, 2}
    assert set(sample(logits, 3000, temperature=1.0, top_p=0.85, seed=1)) == {1, 2, 3}
    counts = Counter(sample(logits, 20000, temperature=1.0, top_p=0.65, seed=2))
    assert abs(counts[1] / 20000 - 0.4 / 0.7) < 0.02


def test_top_p_is_applied_after_top_k():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    # top_k=2 leaves {0: 4/7, 1: 3/7}; top_p=0.5 of that keeps only token 0.
    assert set(sample(np.log(p), 500, temperature=1.0, top_k=2, top_p=0.5, seed=0)) == {0}


def test_top_p_over_large_vocab_widens_its_window():
    # Nearly flat over 50k tokens: top_p=0.9 needs ~45k candidates, far past the first window.
    logits = np.random.default_rng(3).normal(scale=0.01, size=50000)
    draws = sample(logits, 400, temperature=1.0, top_p=0.9, seed=11)
    assert len(set(draws)) > 380
    order = np.argsort(-logits, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    assert max(rank[d] for d in draws) < 0.93 * 50000


def test_extreme_logits_do_not_overflow():
    logits = [1e30, -1e30, 0.0, 1e30 - 1e24]
    assert set(sample(logits, 100, temperature=1.0, seed=0)) <= {0, 3}


@pytest.mark.parametrize(
    "config",
    [{"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"max_tokens": 0}],
)
def test_invalid_generation_config_raises_value_error(config):
    with pytest.raises(ValueError):
        sample([0.0, 1.0], **config)
