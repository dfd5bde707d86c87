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


# ---------------------------------------------------------------------------------------------
# The rest of the pipeline: mask, logit_bias, penalties, min_p, and the logprobs it reports.
# `reference` is the definition, written out in numpy; the sampler's reported logprob of every
# drawn token must equal it, and draws must follow it.


def logprobs_of(logits, n=1, prompt=(), generated=(), allowed=None, **config):
    config = {"logprobs": True, **config}
    return _core._sample_logprobs(np.asarray(logits, dtype=np.float32).tolist(), json.dumps(config), n,
                                  list(prompt), list(generated), allowed)


def reference(logits, prompt=(), generated=(), temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
              presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, logit_bias=()):
    """log-probabilities of the distribution a token is drawn from (-inf = cut)."""
    x = np.asarray(logits, dtype=np.float64).copy()
    for token, bias in logit_bias:
        x[token] += bias
    for token in set(prompt) | set(generated):  # HF repetition penalty: prompt and output
        x[token] = x[token] / repetition_penalty if x[token] > 0 else x[token] * repetition_penalty
    counts = Counter(generated)  # OpenAI: output tokens only
    for token, c in counts.items():
        x[token] -= c * frequency_penalty + presence_penalty
    x = x / temperature
    p = np.exp(x - x.max())
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    keep = np.zeros(len(p), bool)
    kept = order[:top_k] if top_k else order
    keep[kept] = True
    if top_p < 1.0:
        mass, target = 0.0, top_p * p[kept].sum()
        keep[:] = False
        for i in kept:
            keep[i] = True
            mass += p[i]
            if mass >= target:
                break
    keep &= p >= min_p * p.max()
    q = np.where(keep, p, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(q / q.sum())


def config_of(**kw):
    return {k: (list(map(list, v)) if k == "logit_bias" else v) for k, v in kw.items()}


CASES = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, min_p=0.2),
    dict(temperature=0.8, top_k=6, top_p=0.9, min_p=0.05),
    dict(temperature=1.0, presence_penalty=1.5, frequency_penalty=0.5),
    dict(temperature=1.0, repetition_penalty=1.8),
    dict(temperature=1.0, presence_penalty=-1.0, frequency_penalty=-0.5),
    dict(temperature=0.9, logit_bias=[(3, 4.0), (0, -100.0)]),
]


@pytest.mark.parametrize("case", CASES)
def test_logprobs_are_the_distribution_drawn_from(case):
    rng = np.random.default_rng(len(str(case)))
    logits = rng.normal(scale=2.0, size=12).astype(np.float32)
    prompt, generated = [1, 2, 2, 7], [7, 7, 3, 9, 9, 9]
    ref = reference(logits, prompt, generated, **case)
    draws = logprobs_of(logits, 4000, prompt, generated, seed=11, top_logprobs=5, **config_of(**case))
    for token, logprob, top_tokens, top_logprobs in draws[:50]:
        assert abs(logprob - ref[token]) < 1e-5, (token, logprob, ref[token])
        finite = [i for i in sorted(range(12), key=lambda i: (-ref[i], i)) if np.isfinite(ref[i])]
        assert top_tokens == finite[:5]
        np.testing.assert_allclose(top_logprobs, ref[finite[:5]], atol=1e-5)
    counts = Counter(t for t, *_ in draws)
    p = np.exp(ref)
    freq = np.array([counts[i] for i in range(12)]) / len(draws)
    assert set(counts) <= {i for i in range(12) if np.isfinite(ref[i])}
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / len(draws)) + 1e-9), (freq, p)


def test_logit_bias_forces_and_bans():
    logits = np.random.default_rng(4).normal(size=300)
    assert set(sample(logits, 300, temperature=1.0, seed=1, logit_bias=[[17, 100]])) == {17}
    best = int(np.argmax(logits))
    draws = sample(logits, 300, temperature=0.3, seed=1, logit_bias=[[best, -100]])
    assert best not in draws
    assert sample(logits, 1, temperature=0.0, logit_bias=[[best, -100]]) != [best]


def test_min_p_filters_relative_to_the_most_likely():
    p = np.array([0.5, 0.3, 0.12, 0.05, 0.03])
    assert set(sample(np.log(p), 3000, temperature=1.0, min_p=0.2, seed=2)) == {0, 1, 2}
    assert set(sample(np.log(p), 3000, temperature=1.0, min_p=0.7, seed=2)) == {0}


def test_penalties_lower_the_odds_of_repeats():
    logits = np.zeros(50)
    generated = [5] * 3 + [6]

    def share(token, **kw):
        draws = sample_with(logits, 4000, generated=generated, temperature=1.0, seed=5, **kw)
        return draws.count(token) / len(draws)

    base = share(5)
    assert base > 0.01
    assert share(5, frequency_penalty=1.0) < share(6, frequency_penalty=1.0) < base * 1.5
    assert share(5, presence_penalty=2.0) < base / 4
    assert share(5, repetition_penalty=2.0) == share(5)  # logit 0: HF's penalty leaves it at 0
    up = np.zeros(50)
    up[5] = 1.0
    hf = sample_with(up, 4000, generated=generated, temperature=1.0, seed=5, repetition_penalty=2.0)
    plain = sample_with(up, 4000, generated=generated, temperature=1.0, seed=5)
    assert hf.count(5) < plain.count(5) * 0.75


def sample_with(logits, n, prompt=(), generated=(), allowed=None, **config):
    return _core._sample_tokens(np.asarray(logits, dtype=np.float32).tolist(), json.dumps(config), n,
                                list(prompt), list(generated), allowed)


def test_repetition_penalty_counts_prompt_tokens():
    logits = np.full(20, 1.0)
    draws = sample_with(logits, 3000, prompt=[3, 4], temperature=1.0, seed=3, repetition_penalty=3.0)
    assert draws.count(3) + draws.count(4) < 3000 * 2 / 20 * 0.7


def test_allowed_token_mask_comes_first():
    logits = np.zeros(64, dtype=np.float32)
    logits[40], logits[63] = 0.5, 9.0
    allowed = [0, 0]
    for t in (3, 40):
        allowed[t // 32] |= 1 << (t % 32)
    assert set(sample_with(logits, 500, allowed=allowed, temperature=1.0, seed=1)) == {3, 40}
    assert sample_with(logits, 1, allowed=allowed, temperature=0.0) == [40]
    # Even a +100 bias cannot revive a masked token.
    assert 63 not in sample_with(logits, 200, allowed=allowed, temperature=1.0, seed=1, logit_bias=[[63, 100]])


def test_greedy_logprobs_are_log_softmax_of_the_processed_logits():
    logits = np.random.default_rng(8).normal(size=1000).astype(np.float32)
    [(token, logprob, top, top_lp)] = logprobs_of(logits, temperature=0.0, top_logprobs=20)
    ls = logits.astype(np.float64) - logits.max()
    ls -= np.log(np.exp(ls).sum())
    assert token == int(np.argmax(logits)) and abs(logprob - ls[token]) < 1e-5
    assert top == list(np.argsort(-ls, kind="stable")[:20])
    np.testing.assert_allclose(top_lp, ls[top], atol=1e-5)
    [(token, logprob, top, _)] = logprobs_of(logits, temperature=0.0, top_logprobs=0)
    assert top == [] and abs(logprob - ls[token]) < 1e-5


@pytest.mark.parametrize("shape", ["flat", "peaked"])
def test_large_vocab_selection_matches_the_reference(shape):
    """top_k / top_p / top logprobs on 49k logits, flat (the histogram path) or peaked."""
    rng = np.random.default_rng(9)
    logits = rng.normal(scale=0.05 if shape == "flat" else 3.0, size=49157).astype(np.float32)
    for case in (dict(temperature=1.0, top_k=40), dict(temperature=1.0, top_p=0.5),
                 dict(temperature=0.2, top_k=40, top_p=0.95, min_p=0.05)):
        ref = reference(logits, **case)
        draws = logprobs_of(logits, 30, seed=1, top_logprobs=20, **case)
        for token, logprob, top_tokens, _ in draws:
            assert np.isfinite(ref[token]) and abs(logprob - ref[token]) < 1e-4
            kept = np.flatnonzero(np.isfinite(ref))
            best = kept[np.lexsort((kept, -ref[kept]))][:20]
            assert top_tokens == list(best)


def test_plain_logprob_hook_for_prompt_tokens():
    logits = np.random.default_rng(2).normal(size=500).astype(np.float32)
    [(token, logprob, top, top_lp)] = _core._plain_logprob(logits.tolist(), 7, 3)
    ls = logits.astype(np.float64) - logits.max()
    ls -= np.log(np.exp(ls).sum())
    assert token == 7 and abs(logprob - ls[7]) < 1e-5 and top == list(np.argsort(-ls)[:3])


@pytest.mark.parametrize(
    "config",
    [{"min_p": 1.5}, {"presence_penalty": 3}, {"frequency_penalty": -2.5}, {"repetition_penalty": 0},
     {"top_logprobs": 21}, {"logit_bias": [[1, 101]]}, {"logit_bias": [[-1, 1]]}, {"logit_bias": [1, 2]}],
)
def test_invalid_new_fields_raise_value_error(config):
    with pytest.raises(ValueError):
        sample([0.0, 1.0], **config)
