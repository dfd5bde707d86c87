"""The benchmark harness: a smoke run on a tiny model decodes every peer's greedy tokens equal to
the model's (transformers' greedy on the same weights) and reports every ratio; the report's
ratio and marking rules on fixed samples. Speed itself is never asserted."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tvmlm.bench import report
from tvmlm.bench.workload import Workload, context_prompt, match_prefix, summary

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None


def _hf_greedy(hf_dir, ids, n) -> list[int]:
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.engine
def test_bench_smoke_greedy_tokens_and_ratios(tiny_model_dir, tmp_path):
    hf = tiny_model_dir("llama-4k")  # plain rope: transformers, tvmlm and llama.cpp read it alike
    if HAS_LLAMA:
        from tvmlm.testing import make_gguf_model

        model, peers = str(make_gguf_model(hf, tmp_path / "tiny.gguf", "F32")), "tvmlm,llama.cpp,llama.cpp-fa-off"
    else:  # CI: no llama_cpp; transformers is the peer
        model, peers = str(hf), "tvmlm,transformers"
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "tvmlm.bench", "--models", model, "--peers", peers, "--rounds", "2", "--threads", "1",
         "--prefill", "16,64", "--contexts", "0,64", "--decode-tokens", "16", "--concurrency", "3",
         "--check-tokens", "8", "--json", str(out), "--markdown", str(md), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    names = peers.split(",")
    # every variant's greedy tokens are the model's (transformers' on the HF weights), every round
    import transformers as tf

    want = _hf_greedy(hf, context_prompt(0, tf.AutoConfig.from_pretrained(hf).vocab_size), 8)
    checks = {c["variant"]: c for c in rep["token_checks"]}
    assert set(checks) == set(names)
    for name, c in checks.items():
        assert c["tokens"] == want and c["stable"], (name, c, want)
    # every figure of every peer has samples, and every row of the table a ratio
    summary_ = rep["summary"][f"{Path(model).name} t=1"]
    metrics = ["load_cold_s", "load_warm_s", "prefill_16_tok_s", "prefill_64_tok_s", "decode_ctx0_tok_s",
               "decode_ctx64_tok_s", "concurrent_3_tok_s", "concurrent_3_decode_tok_s"]
    rss = [k for k in summary_["tvmlm"] if k.startswith("rss_ctx")]
    assert len(rss) == 1 and rss[0].endswith("_mb")
    metrics += rss
    for name in names:
        for key in metrics:
            assert summary_[name][key]["n"] >= 1 and summary_[name][key]["median"] > 0, (name, key)
    rows = [line for line in md.read_text().splitlines() if re.match(r"\| \S+ \| 1 \| .*\((tok/s|s|MB)\) \|", line)]
    assert len(rows) == len(metrics), rows
    for row in rows:
        assert re.search(r"\d+\.\d\dx", row.strip("| ").split(" | ")[-1]), row


def _sample(variant, **metrics):
    return {"model": "/m/a.gguf", "threads": 2, "kind": "single", "round": 0, "variant": variant, **metrics}


def test_report_ratios_pick_llamas_better_setting_and_mark_worse():
    results = []
    for rnd, (ours, auto, off) in enumerate([(150, 90, 100), (160, 80, 95), (140, 85, 105)]):
        results += [
            _sample("tvmlm", round=rnd, decode_ctx0_tok_s=ours, rss_ctx1104_mb=800.0, load_warm_s=0.2, load_cold_s=30.0),
            _sample("llama.cpp", round=rnd, decode_ctx0_tok_s=auto, rss_ctx1104_mb=300.0, load_warm_s=0.3),
            _sample("llama.cpp-fa-off", round=rnd, decode_ctx0_tok_s=off, rss_ctx1104_mb=280.0, load_warm_s=0.3),
        ]
    text = report.table(results, ["tvmlm", "llama.cpp", "llama.cpp-fa-off"])
    decode = next(line for line in text.splitlines() if "decode at context 0" in line)
    assert "150 (140-160)" in decode and "1.50x (fa off)" in decode and "worse" not in decode
    rss = next(line for line in text.splitlines() if "peak RSS" in line)
    assert "**2.86x (fa off) worse**" in rss  # 800 / 280: tvmlm / llama.cpp's smaller
    warm = next(line for line in text.splitlines() if "load, warm" in line)
    assert "0.67x" in warm and "worse" not in warm
    cold = next(line for line in text.splitlines() if "load, cold" in line)  # llama.cpp: its only load
    assert cold.split("|")[5].strip() == "0.3 (0.3-0.3)" and "**100.00x (fa auto) worse**" in cold
    for r in results:  # no tvmlm cold load (a warm --work-dir): no cold row at all
        r.pop("load_cold_s", None)
    assert "load, cold" not in report.table(results, ["tvmlm", "llama.cpp", "llama.cpp-fa-off"])


def test_token_checks_report_the_shared_prefix():
    results = [dict(_sample("tvmlm"), greedy_tokens=[1, 2, 3, 4]),
               dict(_sample("llama.cpp"), greedy_tokens=[1, 2, 9, 4]),
               dict(_sample("llama.cpp", round=1), greedy_tokens=[1, 2, 9, 4])]
    checks = {c["variant"]: c for c in report.token_checks(results, ["tvmlm", "llama.cpp"])}
    assert checks["llama.cpp"]["match_vs_tvmlm"] == "2/4" and checks["llama.cpp"]["stable"]
    assert match_prefix([1, 2], [1, 2, 3]) == 2


def test_summary_and_workload_sizes():
    s = summary([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4) and s["q1"] <= s["q3"]
    assert summary([float("nan")]) == {"n": 0}
    w = Workload(prefill=[128], contexts=[0, 1024], decode_tokens=64, check_tokens=32)
    assert w.max_len() >= 1024 + 64


def test_rounds_interleave_peers_and_alternate_their_order(monkeypatch, tmp_path):
    from tvmlm.bench import rounds

    calls = []

    def fake_job(spec, env, timeout):
        calls.append((spec["kind"], spec["options"].get("kv_dtype", spec["options"].get("flash_attn")), env["TVM_NUM_THREADS"]))
        return {"load_cold_s": 9.0, "job_s": 0.1} if spec["kind"] == "cold" else {"load_warm_s": 1.0, "job_s": 0.1}

    monkeypatch.setattr(rounds, "run_job", fake_job)
    plan = rounds.Plan(models=["m.gguf"], variants=[rounds.VARIANTS["tvmlm"], rounds.VARIANTS["llama.cpp"]], threads=[1],
                       workload=Workload(concurrency=0), rounds=3, work_dir=tmp_path)
    results = rounds.run(plan, log=lambda s: None)
    assert calls == [("cold", None, "1"), ("single", None, "1"), ("single", "auto", "1"),
                     ("single", "auto", "1"), ("single", None, "1"), ("single", None, "1"), ("single", "auto", "1")]
    assert [r["round"] for r in results] == [0, 0, 0, 1, 1, 2, 2]
    # a cache from an earlier run (--work-dir) is brought up to date, and gives no cold figure
    calls.clear()
    plan.rounds = 0
    results = rounds.run(plan, log=lambda s: None)
    assert calls == [("cold", None, "1")] and results[0]["kind"] == "prepare" and "load_cold_s" not in results[0]
