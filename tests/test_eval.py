"""tvmlm.eval: the metrics' arithmetic, windows, and the whole gate on a tiny float32 model (whose
KL against transformers must be ~0) and on SmolLM2 against llama.cpp (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tvmlm.eval.corpus import default_corpus, windows
from tvmlm.eval.metrics import ROW_BLOCK, Scores, log_softmax


def test_metrics_on_hand_computed_distributions():
    # reference p = [0.5, 0.5]; engine q = [0.9, 0.1] then [0.25, 0.75]
    ref = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    eng = np.log(np.array([[0.9, 0.1], [0.25, 0.75]])) + np.array([[3.0], [-7.0]])  # softmax ignores shifts
    s = Scores()
    s.add(eng, ref, np.array([0, 0]))
    kl = [0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)]
    assert s.tokens == 2
    assert s.kl == pytest.approx(sum(kl) / 2, rel=1e-12)
    assert s.kl_max == pytest.approx(max(kl), rel=1e-12)
    assert s.ppl == pytest.approx(math.exp((-math.log(0.9) - math.log(0.25)) / 2), rel=1e-12)
    assert s.top1 == 0.5  # argmax of the tied reference is index 0: the engine agrees on row 0 only


def test_metrics_match_a_direct_computation_across_row_blocks():
    rng = np.random.default_rng(0)
    n, vocab = 2 * ROW_BLOCK + 5, 97
    ref = rng.normal(size=(n, vocab)).astype(np.float32) * 3
    eng = ref + rng.normal(size=(n, vocab)).astype(np.float32) * 0.3
    targets = rng.integers(0, vocab, size=n)
    s = Scores()
    s.add(eng[:40], ref[:40], targets[:40])  # two calls accumulate like one
    s.add(eng[40:], ref[40:], targets[40:])
    p = np.exp(ref.astype(np.float64)) / np.exp(ref.astype(np.float64)).sum(1, keepdims=True)
    q = np.exp(eng.astype(np.float64)) / np.exp(eng.astype(np.float64)).sum(1, keepdims=True)
    kl = (p * np.log(p / q)).sum(1)
    assert s.kl == pytest.approx(kl.mean(), rel=1e-9)
    assert s.ppl == pytest.approx(math.exp(-np.log(q[np.arange(n), targets]).mean()), rel=1e-9)
    assert s.top1 == pytest.approx((p.argmax(1) == q.argmax(1)).mean())
    same = Scores()
    same.add(ref, ref, targets)
    assert abs(same.kl) < 1e-12 and same.top1 == 1.0
    np.testing.assert_allclose(np.exp(log_softmax(ref)).sum(1), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        s.add(eng[:3], ref[:4], targets[:3])


def test_windows_are_non_overlapping_with_the_prefix_on_each():
    ids = list(range(100, 130))
    assert windows(ids, 8, 20) == [ids[0:8], ids[8:16], ids[16:20]]
    assert windows(ids, 8, 1000, prefix=[1]) == [[1, *ids[0:7]], [1, *ids[7:14]], [1, *ids[14:21]], [1, *ids[21:28]], [1, *ids[28:30]]]
    assert windows(ids, 8, 17) == [ids[0:8], ids[8:16]]  # a 1-token tail scores nothing
    with pytest.raises(ValueError, match="no room"):
        windows(ids, 1, 10, prefix=[1])


def test_the_shipped_corpus_is_there():
    text = default_corpus()
    assert text.startswith("The unanimous Declaration") and text.rstrip().endswith("shall not perish from the earth.")
    assert 9000 < len(text.encode()) < 11000


def test_cli_has_the_eval_command(capsys):
    from tvmlm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    assert "--tokens" in capsys.readouterr().out


@pytest.mark.engine
def test_float32_tiny_model_matches_transformers(tiny_package, tiny_model_dir, tmp_path):
    """The f32 tiny llama: every position's logits (prefill in two chunks of logit rows per
    window: 160 > the compiled batch size 128) equal transformers' up to float32 rounding."""
    import json

    from tvmlm.eval.__main__ import main

    tiny_package("llama")  # compiled once per session; the gate's Engine package is the same one
    out = tmp_path / "eval.json"
    assert main([str(tiny_model_dir("llama")), "--tokens", "300", "--ctx", "160", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["files"]
    assert result["windows"] == 2
    ref, got = result["results"]["transformers f32"], result["results"]["tvmlm"]
    assert got["tokens"] == ref["tokens"] == 298
    assert got["kl"] < 1e-6 and got["kl_max"] < 1e-5
    assert got["ppl"] == pytest.approx(ref["ppl"], rel=1e-4)
    assert got["top1"] > 0.99
    assert got["weight_formats"] == {"linear": "f32", "embed": "f32", "lm_head": "f32"}


@pytest.mark.slow
def test_smollm2_q4_1_against_llama_cpp(smollm2_path):
    """The shipped Q4_1 file, two 128-token windows: tvmlm's KL against float32 is small and at
    most 10% above llama.cpp's (measured: 0.0170 vs 0.0166). docs/quality.md has the full run."""
    pytest.importorskip("llama_cpp")
    from tvmlm.eval import evaluate_file

    result = evaluate_file(smollm2_path, default_corpus(), ctx=128, tokens=256, progress=None)
    r = result["results"]
    assert r["tvmlm"]["tokens"] == r["llama.cpp"]["tokens"] == 254
    assert r["tvmlm"]["kl"] < 0.05 and r["llama.cpp"]["kl"] < 0.05
    assert r["tvmlm"]["kl"] <= 1.1 * r["llama.cpp"]["kl"]
    assert r["tvmlm"]["top1"] > 0.85
