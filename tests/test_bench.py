"""The benchmark harness runs end to end (smoke mode: a tiny model, tvmlm vs transformers) and
reports every figure with a ratio. Speed itself is never asserted in tests."""

import json
import subprocess
import sys


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tvmlm.bench", "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    peers = {r["peer"]: r for r in report["results"]}
    assert set(peers) == {"tvmlm", "transformers"}
    for r in peers.values():
        for key in ("load_cold_s", "ttft_128_s", "prefill_16_tok_s", "prefill_64_tok_s", "decode_b1_tok_s", "concurrent_4_tok_s", "peak_rss_mb"):
            assert r[key] > 0, (r["peer"], key)
    assert "tvmlm/transformers" in proc.stdout and "decode, batch 1" in proc.stdout
    # the engine's own per-step cost, measured against the compiled model run alone
    assert peers["tvmlm"]["model_step_ms"] > 0
    # a median of paired ratios: below zero when the engine's cost is under this VM's noise
    assert -50 < peers["tvmlm"]["engine_overhead_pct"] < 100
    assert "engine overhead per decode step" in proc.stdout
