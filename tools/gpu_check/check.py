"""The GPU check: tvmlm._core on CUDA vs transformers, parity and speed (see README.md here).

    python tools/gpu_check/check.py [--device cuda|cpu] [--models DIR] [--out DIR] [--quick]

Without --stage it is the driver: it runs each stage below in its own subprocess (a crash or hang
in one is reported and the others still run), then prints a table and writes <out>/gpu_check.json.
Stages: prepare (random HF weights -> packages), parity_tiny, parity_f16, core_speed,
engine_speed, hf_speed. Needs numpy, safetensors, torch, transformers and an importable
tvmlm._core; never imports tvm.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

# An editable install of tvmlm (scikit-build-core) would shadow the PYTHONPATH package run.sh built.
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY, F16, BIG, BIG8 = "tiny-llama-f32", "smollm2-shape-f16", "llama-1b-shape-f16", "llama-8b-shape-f16"
# A carried model dir named "<model>-<tag>" (e.g. smollm2-shape-f16-base: a library built by an
# older tvmlm) is an A/B variant of <model>: same weights, another library.
PEAK_BW = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12}  # bytes/s
STAGES = {  # name -> timeout (s) on the GPU machine; the CPU dry run gets 20x
    "prepare": 150, "parity_tiny": 60, "parity_f16": 60, "prepare_8b": 240, "core_speed": 180, "prefill_speed": 90, "profile": 60, "engine_speed": 120,
    "engine_speed_8b": 120,
    "hf_speed": 90,
}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# helpers


def core_device(args) -> str:
    return "cuda:0" if args.device == "cuda" else "cpu:0"


def torch_device(args):
    import torch

    return torch.device("cuda:0" if args.device == "cuda" else "cpu")


def sync(args) -> None:
    if args.device == "cuda":
        import torch

        torch.cuda.synchronize()


def rand_prompt(rng, vocab: int, n: int) -> list[int]:
    return rng.integers(3, vocab, size=n).tolist()


def hf_model(args, name: str):
    """transformers model on the check's device from <work>/hf-<name> (made by `prepare`)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if name == TINY else torch.float16
    model = AutoModelForCausalLM.from_pretrained(str(args.work / f"hf-{name}"), dtype=dtype)
    return model.to(torch_device(args)).eval()


def new_core_model(args, name: str, batch: int = 8, total: int = 4096, chunk: int = 1024):
    from tvmlm import _core

    m = _core.Model(str(args.work / f"pkg-{name}"), core_device(args), args.threads)
    m.create_kv_cache(batch, total, chunk)
    return m


def hf_greedy(args, model, prompt: list[int], steps: int):
    """Last-token logits after the prompt and each greedy token (whole sequence recomputed)."""
    import numpy as np
    import torch

    logits, tokens, seq = [], [], list(prompt)
    with torch.no_grad():
        for _ in range(steps + 1):
            row = model(torch.tensor([seq], device=torch_device(args))).logits[0, -1].float().cpu().numpy()
            logits.append(row)
            tokens.append(int(np.argmax(row)))
            seq.append(tokens[-1])
    return np.stack(logits), tokens


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


# ------------------------------------------------------------------------------------------------
# stages (each returns a JSON-able dict)


def stage_prepare(args) -> dict:
    """Random-weight HF models from the carried config.json (seeded) -> tvmlm packages."""
    import numpy as np
    import torch
    import transformers

    from tvmlm import weights
    from tvmlm.models.convert import convert_params

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    from tvmlm import _core

    out["core_module"] = _core.__file__
    out["core_device_exists"] = bool(_core.device_exists(args.device, 0))
    for name in (TINY, F16):
        if not (args.models / name).exists():
            continue
        t0 = time.time()
        src, hf, pkg = args.models / name, args.work / f"hf-{name}", args.work / f"pkg-{name}"
        config = json.loads((src / "config.json").read_text())
        hf.mkdir(parents=True, exist_ok=True)
        (hf / "config.json").write_text(json.dumps(config))
        cfg = transformers.AutoConfig.from_pretrained(str(hf))
        rope_theta = config.get("rope_theta") or config["rope_parameters"]["rope_theta"]
        cfg.rope_theta = rope_theta  # transformers 4.x and 5.x keep it in different places
        if isinstance(getattr(cfg, "rope_parameters", None), dict):
            cfg.rope_parameters["rope_theta"] = rope_theta
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        if name == TINY:  # as tvmlm.testing.make_hf_model: norms randomized too
            with torch.no_grad():
                for pname, p in model.named_parameters():
                    if pname.endswith("norm.weight"):
                        p.copy_(1.0 + 0.2 * torch.randn_like(p))
        dtype = torch.float32 if name == TINY else torch.float16
        model.to(dtype).save_pretrained(str(hf), safe_serialization=True)
        pkg.mkdir(parents=True, exist_ok=True)
        for f in ("lib.so", "metadata.json"):
            shutil.copyfile(src / f, pkg / f)
        metadata = json.loads((src / "metadata.json").read_text())
        convert_params(weights.load(hf), metadata, pkg / "params.safetensors", progress=False)
        out[name] = {
            "seconds": round(time.time() - t0, 1),
            "params": int(sum(int(np.prod(p["shape"])) for p in metadata["params"])),
            "params_bytes": metadata["params_bytes"],
        }
    if (args.models / BIG).exists():
        t0 = time.time()
        out[BIG] = {"params_bytes": _random_package(args, BIG), "seconds": round(time.time() - t0, 1)}
    _link_variants(args)
    return out


def stage_prepare_8b(args) -> dict:
    """The 8B-shape package (16 GB of random weights), in its own stage: slow, and optional."""
    if not (args.models / BIG8).exists():
        return {"skipped": f"{BIG8} not carried"}
    t0 = time.time()
    out = {"params_bytes": _random_package(args, BIG8), "seconds": round(time.time() - t0, 1)}
    _link_variants(args)
    return out


def _variant_of(name: str) -> str | None:
    return next((m for m in (F16, BIG, BIG8) if name.startswith(m + "-")), None)


def _link_variants(args) -> None:
    """pkg-<model>-<tag>: the variant's library with <model>'s weights (a symlink)."""
    for src in sorted(args.models.iterdir()):
        model = _variant_of(src.name)
        if model is None or not (args.work / f"pkg-{model}" / "params.safetensors").exists():
            continue
        pkg = args.work / f"pkg-{src.name}"
        pkg.mkdir(parents=True, exist_ok=True)
        for f in ("lib.so", "metadata.json"):
            shutil.copyfile(src / f, pkg / f)
        if not (pkg / "params.safetensors").exists():
            os.symlink(args.work / f"pkg-{model}" / "params.safetensors", pkg / "params.safetensors")


def _random_package(args, name: str) -> int:
    """A package with random float16 weights (N(0, 0.02), norms 1) straight from metadata.json."""
    import torch
    from safetensors.torch import save_file

    src, pkg = args.models / name, args.work / f"pkg-{name}"
    pkg.mkdir(parents=True, exist_ok=True)
    for f in ("lib.so", "metadata.json"):
        shutil.copyfile(src / f, pkg / f)
    metadata = json.loads((src / "metadata.json").read_text())
    g = torch.Generator(device=torch_device(args)).manual_seed(0)
    tensors = {}
    for p in metadata["params"]:
        dtype = getattr(torch, p["dtype"])
        if p["name"].endswith("norm.weight"):
            tensors[p["name"]] = torch.ones(p["shape"], dtype=dtype)
        else:
            t = torch.randn(p["shape"], generator=g, device=torch_device(args), dtype=torch.float32) * 0.02
            tensors[p["name"]] = t.to(dtype).cpu()
    save_file(tensors, str(pkg / "params.safetensors"))
    (pkg / "config.json").write_text((src / "config.json").read_text())
    return metadata["params_bytes"]


def _parity(args, name: str, tol: float, exact_tokens: bool) -> dict:
    import numpy as np

    from tvmlm.testing.greedy import core_greedy

    rng = np.random.default_rng(0)
    vocab = json.loads((args.models / name / "metadata.json").read_text())["vocab_size"]
    steps = args.steps_parity
    prompt = rand_prompt(rng, vocab, 12)
    m = new_core_model(args, name)
    t0 = time.time()
    m.add_sequence(0)
    core_logits, core_tokens = core_greedy(m, 0, prompt, steps)
    m.remove_sequence(0)
    core_s = time.time() - t0
    model = hf_model(args, name)
    ref_logits, ref_tokens = hf_greedy(args, model, prompt, steps)
    div = first_divergence(core_tokens, ref_tokens)
    # Compare logits only up to the first divergence (later rows see different inputs).
    upto = len(core_tokens) if div is None else div + 1
    out = {
        "steps": steps,
        "max_abs_logit_diff": float(np.abs(core_logits[:upto] - ref_logits[:upto]).max()),
        "logit_scale": float(np.abs(ref_logits).max()),
        "tokens_equal": core_tokens == ref_tokens,
        "first_divergence": div,
        "core_seconds": round(core_s, 3),
    }
    if div is not None:  # how close the reference's top-2 were where the tokens split
        top2 = np.sort(ref_logits[div])[-2:]
        out["ref_top2_margin_at_divergence"] = float(top2[1] - top2[0])

    # A batch of four different-length prompts prefilled and decoded together == each alone.
    prompts = [rand_prompt(rng, vocab, n) for n in (5, 11, 23, 40)]
    alone = []
    for i, p in enumerate(prompts):
        m.add_sequence(10 + i)
        alone.append(core_greedy(m, 10 + i, p, steps))
        m.remove_sequence(10 + i)
    ids = [20 + i for i in range(4)]
    for s in ids:
        m.add_sequence(s)
    rows = [m.prefill(ids, prompts)]
    toks = [[int(np.argmax(r))] for r in rows[0]]
    for _ in range(steps):
        rows.append(m.decode(ids, [t[-1] for t in toks]))
        for t, r in zip(toks, rows[-1]):
            t.append(int(np.argmax(r)))
    batch_logits = np.stack(rows, axis=1)  # [4, steps + 1, V]
    out["batch4_tokens_equal"] = all(toks[i] == alone[i][1] for i in range(4))
    diffs = []
    for i in range(4):
        d = first_divergence(toks[i], alone[i][1])
        upto_i = len(toks[i]) if d is None else d + 1
        diffs.append(np.abs(batch_logits[i, :upto_i] - alone[i][0][:upto_i]).max())
    out["batch4_max_abs_logit_diff"] = float(max(diffs))
    close = out["max_abs_logit_diff"] < tol and out["batch4_max_abs_logit_diff"] < tol
    out["ok"] = bool(close and (not exact_tokens or (out["tokens_equal"] and out["batch4_tokens_equal"])))
    return out


def stage_parity_tiny(args) -> dict:
    return _parity(args, TINY, tol=1e-3, exact_tokens=True)


def stage_parity_f16(args) -> dict:
    # float16 on both sides with different kernels: token splits at near-ties are possible with
    # random weights, so "ok" asks for close logits (up to the first split), not equal tokens.
    return _parity(args, F16, tol=0.05, exact_tokens=False)


def speed_models(args) -> list[str]:
    """Every prepared package but the tiny one: each model, then its variants."""
    names = [p.name[len("pkg-"):] for p in args.work.glob("pkg-*") if (p / "params.safetensors").exists()]
    return sorted((n for n in names if n != TINY), key=lambda n: ((_variant_of(n) or n), n))


def stage_core_speed(args) -> dict:
    """_core.Model decode step time (no engine, no sampling; logits copied to the host each step)
    per model library and batch size."""
    import numpy as np

    rng = np.random.default_rng(1)
    out = {}
    for name in speed_models(args):
        meta = json.loads((args.work / f"pkg-{name}" / "metadata.json").read_text())
        batches = args.core_batches if name.startswith(F16) else args.core_batches[:2]  # big: 1, 16
        m = new_core_model(args, name, batch=max(batches), total=max(batches) * 512, chunk=2048)
        read = decode_read_bytes(meta)
        res = out[name] = {"params_bytes": meta["params_bytes"], "decode_read_bytes": read}
        for b in batches:
            ids = list(range(b))
            for s in ids:
                m.add_sequence(s)
            t0 = time.perf_counter()
            rows = m.prefill(ids, [rand_prompt(rng, meta["vocab_size"], 32) for _ in ids])
            prefill_s = time.perf_counter() - t0
            toks = [int(t) for t in np.argmax(rows, axis=1)]
            for _ in range(args.warmup):
                toks = [int(t) for t in np.argmax(m.decode(ids, toks), axis=1)]
            n = args.steps_speed if b == 1 else max(8, args.steps_speed // 4)
            t0 = time.perf_counter()
            for _ in range(n):
                toks = [int(t) for t in np.argmax(m.decode(ids, toks), axis=1)]
            step = (time.perf_counter() - t0) / n
            res[f"b{b}"] = {"steps": n, "ms_per_step": round(step * 1e3, 3), "tok_s": round(b / step, 1),
                            "prefill_32xb_ms": round(prefill_s * 1e3, 1),
                            "weight_GB_s": round(read / step / 1e9, 1)}  # fmt: skip
            for s in ids:
                m.remove_sequence(s)
        del m
    return out


def matmul_flops_per_token(meta: dict) -> int:
    """2 x the decoder's projection weights (qkv, o, gate_up, down): the matmul work of one token
    through the layers (attention scores and the one-row lm_head left out)."""
    n = 0
    for p in meta["params"]:
        if p["name"].endswith("proj.weight"):
            size = 1
            for d in p["shape"]:
                size *= int(d)
            n += size
    return 2 * n


def stage_prefill_speed(args) -> dict:
    """_core.Model prefill of one prompt of 512 and 2048 tokens (batch_prefill; float16 matmuls on
    tensor cores, models/tensor_cores.py): ms, tok/s and the projections' TFLOP/s."""
    import numpy as np

    rng = np.random.default_rng(2)
    out = {}
    lengths = (64, 128) if args.quick else (512, 2048)
    for name in speed_models(args):
        meta = json.loads((args.work / f"pkg-{name}" / "metadata.json").read_text())
        m = new_core_model(args, name, batch=1, total=max(lengths) + 64, chunk=max(lengths))
        flops = matmul_flops_per_token(meta)
        res = out[name] = {"matmul_flops_per_token": flops}
        for n in lengths:
            prompt = rand_prompt(rng, meta["vocab_size"], n)
            times = []
            for _ in range(1 if args.quick else 3):  # the first call also pays one-time setup
                m.add_sequence(0)
                t0 = time.perf_counter()
                m.prefill([0], [prompt])  # returns the last row's logits on the host: synchronized
                times.append(time.perf_counter() - t0)
                m.remove_sequence(0)
            best = min(times)
            res[f"p{n}"] = {"ms": round(best * 1e3, 2), "tok_s": round(n / best, 1),
                            "matmul_TFLOP_s": round(flops * n / best / 1e12, 2)}  # fmt: skip
        del m
    return out


def stage_profile(args) -> dict:
    """Where a batch-1 decode step's time goes: CUDA kernel time (CUPTI, through torch.profiler,
    which sees every kernel in the process) against the step's wall time."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    if args.device != "cuda":
        return {"skipped": "cuda only"}
    torch.cuda.init()
    out = {}
    for name in speed_models(args):
        meta = json.loads((args.work / f"pkg-{name}" / "metadata.json").read_text())
        m = new_core_model(args, name, batch=4, total=4096, chunk=512)
        m.add_sequence(0)
        tok = int(np.argmax(m.prefill([0], [list(range(3, 35))])[0]))
        for _ in range(4):
            tok = int(np.argmax(m.decode([0], [tok])[0]))
        steps = 16
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                tok = int(np.argmax(m.decode([0], [tok])[0]))
            wall = (time.perf_counter() - t0) / steps
        kernels: dict[str, list[float]] = {}
        host: dict[str, list[float]] = {}  # CUDA API calls (cudaMemcpy, launches, ...) as CUPTI saw them
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                kernels.setdefault(e.name, []).append(e.device_time)
            elif e.name.startswith(("cu", "cuda")):
                host.setdefault(e.name, []).append(e.cpu_time)
        total_us = sum(sum(v) for v in kernels.values()) / steps
        top = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:12]
        out[name] = {
            "wall_ms_per_step": round(wall * 1e3, 3),
            "gpu_busy_ms_per_step": round(total_us / 1e3, 3),
            "gpu_events_per_step": round(sum(len(v) for v in kernels.values()) / steps, 1),
            "hbm_bound_ms": round(decode_read_bytes(meta) / _peak_bw(torch.cuda.get_device_name(0)) * 1e3, 4),
            "top_kernels": [{"name": k[:90], "per_step": round(len(v) / steps, 1),
                             "us_per_step": round(sum(v) / steps, 1)} for k, v in top],
            "top_host_api": [{"name": k[:60], "per_step": round(len(v) / steps, 1),
                              "us_per_step": round(sum(v) / steps, 1)}
                             for k, v in sorted(host.items(), key=lambda kv: -sum(kv[1]))[:8]],
        }
        del m
    return out


def decode_read_bytes(meta: dict) -> int:
    """Bytes one batch-1 decode step has to read: every weight once, except the embedding table,
    of which the step looks up one row. A table tied to the lm_head is read whole (as the lm_head)."""
    itemsize = {"float32": 4, "float16": 2, "bfloat16": 2, "uint32": 4, "int32": 4, "uint8": 1, "int8": 1}
    sizes = {}
    for p in meta["params"]:
        n = itemsize[p["dtype"]]
        for d in p["shape"]:
            n *= int(d)
        sizes[p["name"]] = n
    total = sum(sizes.values())
    if not any(name.startswith("lm_head.") for name in sizes):
        return total  # tied: the lm_head's GEMV reads the whole table
    embed = sum(n for name, n in sizes.items() if "embed_tokens." in name)
    return total - embed + embed // int(meta["vocab_size"])


def _peak_bw(gpu: str) -> float:
    return next((bw for key, bw in PEAK_BW.items() if key in gpu), float("nan"))


def stage_engine_speed(args) -> dict:
    """ThreadedEngine on the SmolLM2 shape: 1 / 4 / 16 / 64 concurrent requests."""
    return _engine_speed(args, F16, args.concurrency)


def stage_engine_speed_8b(args) -> dict:
    """ThreadedEngine on the 8B shape (when prepared): 1 and 16 concurrent requests."""
    if not (args.work / f"pkg-{BIG8}" / "params.safetensors").exists():
        return {"skipped": f"{BIG8} not prepared"}
    return _engine_speed(args, BIG8, args.concurrency[:1] + args.concurrency[2:3])


def _engine_speed(args, name: str, concurrency) -> dict:
    """n concurrent requests of 128 greedy tokens, both engine loops on Python threads."""
    import numpy as np

    from tvmlm import _core

    rng = np.random.default_rng(2)
    vocab = json.loads((args.work / f"pkg-{name}" / "metadata.json").read_text())["vocab_size"]
    deltas: queue.Queue = queue.Queue()
    engine = _core.ThreadedEngine()
    engine.init(core_device(args), lambda ds: [deltas.put(d) for d in ds])
    max_n, gen = max(concurrency), args.gen_tokens
    engine.reload(json.dumps({"model": str(args.work / f"pkg-{name}"), "max_num_sequence": max_n,
                              "max_total_sequence_length": max_n * (32 + gen) + 512,
                              "prefill_chunk_size": 2048, "num_threads": args.threads}))  # fmt: skip
    threads = [threading.Thread(target=engine.run_background_loop, daemon=True),
               threading.Thread(target=engine.run_background_stream_back_loop, daemon=True)]  # fmt: skip
    for t in threads:
        t.start()
    gen_cfg = json.dumps({"max_tokens": gen, "temperature": 0.0, "ignore_eos": True})

    def run(n: int, tag: str) -> dict:
        ids = [f"{tag}-{i}" for i in range(n)]
        first, done, ntok, errors = {}, {}, 0, []
        t0 = time.perf_counter()
        for i in ids:
            engine.add_request(i, rand_prompt(rng, vocab, 32), gen_cfg)
        deadline = time.monotonic() + args.stage_timeout * 0.8
        while len(done) < n:
            try:
                d = deltas.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{tag}: {len(done)} of {n} requests finished, {ntok} tokens, in time") from None
            now = time.perf_counter() - t0
            if d.token_ids and d.request_id not in first:
                first[d.request_id] = now
            ntok += len(d.token_ids)
            if d.finish_reason is not None:
                done[d.request_id] = now
                if d.finish_reason != "length":
                    errors.append(f"{d.request_id}: {d.finish_reason} {d.error}")
        wall = max(done.values())
        return {"requests": n, "generated": ntok, "wall_s": round(wall, 3), "tok_s": round(ntok / wall, 1),
                "ttft_mean_ms": round(1e3 * sum(first.values()) / max(1, len(first)), 1),
                "errors": errors[:3]}  # fmt: skip

    out = {}
    try:
        run(1, "warmup")
        for n in concurrency:
            out[f"n{n}"] = run(n, f"n{n}")
        out["metrics"] = json.loads(engine.metrics())
    finally:
        engine.exit_background_loop()
        for t in threads:
            t.join(timeout=10)
    return out


def stage_hf_speed(args) -> dict:
    """transformers float16 greedy generate of 128 tokens at batch 1 and 16; and the HBM copy rate."""
    import torch

    out = {}
    if args.device == "cuda":  # measured device-to-device copy bandwidth (read + write)
        x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
        y = torch.empty_like(x)
        y.copy_(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            y.copy_(x)
        torch.cuda.synchronize()
        out["copy_GB_s"] = round(2 * 10 * x.numel() / (time.perf_counter() - t0) / 1e9, 1)
        del x, y
    model = hf_model(args, F16)
    g = torch.Generator().manual_seed(3)
    for b in args.hf_batches:
        ids = torch.randint(3, model.config.vocab_size, (b, 32), generator=g).to(torch_device(args))
        out[f"b{b}"] = _hf_generate(args, model, ids)
    if (args.work / f"pkg-{BIG}").exists() and args.device == "cuda":  # same shapes, random weights
        from transformers import AutoConfig, AutoModelForCausalLM

        del model
        cfg = AutoConfig.from_pretrained(str(args.work / f"pkg-{BIG}"))
        with torch.device("cuda"):
            big = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16).eval()
        ids = torch.randint(3, cfg.vocab_size, (1, 32), generator=g).cuda()
        out[f"{BIG}-b1"] = _hf_generate(args, big, ids)
    return out


def _hf_generate(args, model, ids) -> dict:
    """Greedy `generate` of args.gen_tokens new tokens per row of `ids`, after a short warm-up."""
    import torch

    gen = args.gen_tokens
    kw = {"attention_mask": torch.ones_like(ids), "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
        sync(args)
        t0 = time.perf_counter()
        res = model.generate(ids, max_new_tokens=gen, min_new_tokens=gen, **kw)
        sync(args)
    wall = time.perf_counter() - t0
    n = int((res.shape[1] - ids.shape[1]) * ids.shape[0])
    return {"generated": n, "wall_s": round(wall, 3), "tok_s": round(n / wall, 1)}


# ------------------------------------------------------------------------------------------------
# driver


def run_stage(args, name: str) -> None:
    result_file = args.work / f"stage-{name}.json"
    t0 = time.time()
    try:
        result = {"ok": True, **globals()[f"stage_{name}"](args)}
    except BaseException as e:  # report, never raise: the driver reads the file
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    result["stage_seconds"] = round(time.time() - t0, 1)
    result_file.write_text(json.dumps(result, indent=1, default=str))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (CUDA/engine destructors) once the result is saved


def drive(args) -> int:
    t_start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "gpu_check.log", "a")
    report: dict = {"device": args.device, "stages": {}}
    scale = 1 if args.device == "cuda" else 20
    for name, timeout in STAGES.items():
        if name not in args.stages:
            continue
        if time.time() - t_start > args.budget:
            report["stages"][name] = {"ok": False, "error": "skipped: time budget spent"}
            continue
        t0 = time.time()
        cmd = [sys.executable, __file__, "--stage", name, *args.passthrough, "--stage-timeout", str(timeout * scale)]
        log.write(f"\n===== {name}: {' '.join(cmd)}\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout * scale).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        f = args.work / f"stage-{name}.json"
        res = json.loads(f.read_text()) if f.exists() else {"ok": False, "error": f"no result (exit {rc})"}
        res.setdefault("wall_s", round(time.time() - t0, 1))
        report["stages"][name] = res
        report["total_seconds"] = round(time.time() - t_start, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))  # partial
        print(f"[{time.time() - t_start:6.1f} s] {name:13s} {'ok' if res.get('ok') else 'FAILED: ' + str(res.get('error'))[:300]}", flush=True)
        if name == "prepare" and not res.get("ok"):
            break  # nothing else can run without packages
    report["total_seconds"] = round(time.time() - t_start, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print_table(report)
    return 0 if all(s.get("ok") for s in report["stages"].values()) else 1


def print_table(report: dict) -> None:
    s = report["stages"]
    get = lambda st, *keys: _dig(s.get(st, {}), keys)  # noqa: E731
    env = s.get("prepare", {})
    gpu = env.get("gpu", report["device"])
    print(f"\n== tvmlm GPU check on {gpu}  (torch {env.get('torch')}, transformers {env.get('transformers')}, "
          f"python {env.get('python')})")  # fmt: skip
    for st in ("parity_tiny", "parity_f16"):
        r = s.get(st, {})
        if "max_abs_logit_diff" in r:
            print(f"{st:12s} {'PASS' if r['ok'] else 'FAIL'}  max|dlogit| {r['max_abs_logit_diff']:.2e} (scale "
                  f"{r['logit_scale']:.1f})  greedy {r['steps']} steps equal: {r['tokens_equal']}"
                  f" (first split {r['first_divergence']})  batch4==alone: {r['batch4_tokens_equal']}"
                  f" max|dlogit| {r['batch4_max_abs_logit_diff']:.1e}")  # fmt: skip
        else:
            print(f"{st:12s} ERROR {str(r.get('error'))[:200]}" if r else f"{st:12s} not run")
    peak = _peak_bw(str(gpu))
    print(f"speed (peak HBM {peak / 1e12:.2f} TB/s, measured copy {get('hf_speed', 'copy_GB_s')} GB/s)")
    for name, res in (s.get("core_speed") or {}).items():
        if not isinstance(res, dict) or "params_bytes" not in res:
            continue
        read = res.get("decode_read_bytes", res["params_bytes"])
        print(f"  {name} (weights {res['params_bytes'] / 1e6:.0f} MB, a decode step reads {read / 1e6:.0f} MB: "
              f"HBM bound batch 1 {peak / read:.0f} tok/s)")  # fmt: skip
        for key, r in res.items():
            if key.startswith("b") and isinstance(r, dict):
                print(f"    _core.Model decode {key:4s}: {r['ms_per_step']:8.3f} ms/step {r['tok_s']:9.1f} tok/s  "
                      f"weights read {r['weight_GB_s']:7.1f} GB/s {r['weight_GB_s'] * 1e9 / peak:6.1%} of peak")  # fmt: skip
    for name, res in (s.get("prefill_speed") or {}).items():
        for key, r in (res.items() if isinstance(res, dict) else []):
            if key.startswith("p") and isinstance(r, dict):
                print(f"  _core.Model prefill {name} {key[1:]:>5s} tokens: {r['ms']:9.2f} ms {r['tok_s']:10.1f} tok/s  "
                      f"projections {r['matmul_TFLOP_s']:6.2f} TFLOP/s")  # fmt: skip
    for name, r in (s.get("profile") or {}).items():
        if isinstance(r, dict) and "wall_ms_per_step" in r:
            print(f"  profile {name} b1: wall {r['wall_ms_per_step']} ms/step, GPU busy {r['gpu_busy_ms_per_step']} ms "
                  f"in {r['gpu_events_per_step']} kernels/copies (HBM bound {r['hbm_bound_ms']} ms)")  # fmt: skip
            for k in r["top_kernels"][:6] + r.get("top_host_api", [])[:5]:
                print(f"      {k['us_per_step']:8.1f} us/step  x{k['per_step']:<5} {k['name']}")
    engine_rows = [(stage, key, r) for stage in ("engine_speed", "engine_speed_8b")
                   for key, r in (s.get(stage) or {}).items() if key.startswith("n") and isinstance(r, dict)]
    for stage, key, r in engine_rows:
        shape = BIG8 if stage.endswith("8b") else F16
        print(f"  ThreadedEngine {shape} {key:4s}: {r['tok_s']:9.1f} tok/s  ({r['generated']} tok in {r['wall_s']} s, "
              f"TTFT {r['ttft_mean_ms']} ms){'  ERRORS ' + str(r['errors']) if r['errors'] else ''}")  # fmt: skip
    for key, r in (s.get("hf_speed") or {}).items():
        if key.startswith("b") and isinstance(r, dict):
            print(f"  transformers generate {key:4s}: {r['tok_s']:9.1f} tok/s  ({r['generated']} tok in {r['wall_s']} s)")
    for name, r in s.items():
        if not r.get("ok"):
            print(f"  ! {name}: {str(r.get('error'))[:300]}")
    print(f"total {report['total_seconds']} s")


def _dig(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--models", type=Path, default=here.parents[1] / "gpu_bundle" / "models")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    ap.add_argument("--work", type=Path, default=here.parents[1] / "build" / "gpu_check" / "work", help="scratch dir")
    ap.add_argument("--quick", action="store_true", help="few steps (for the CPU dry run)")
    ap.add_argument("--budget", type=float, default=270.0, help="start no stage after this many seconds")
    ap.add_argument("--stage", choices=list(STAGES))
    ap.add_argument("--stages", nargs="*", choices=list(STAGES), default=list(STAGES), help="run only these")
    ap.add_argument("--stage-timeout", type=float, default=120.0)
    args = ap.parse_args()
    args.work, args.models, args.out = args.work.resolve(), args.models.resolve(), args.out.resolve()
    args.passthrough = ["--device", args.device, "--models", str(args.models), "--out", str(args.out),
                        "--work", str(args.work)] + (["--quick"] if args.quick else [])  # fmt: skip
    args.threads = 0 if args.device == "cuda" else (os.cpu_count() or 1)
    args.steps_parity = 24
    args.steps_speed, args.warmup, args.gen_tokens = (8, 2, 8) if args.quick else (128, 8, 128)
    args.core_batches = (1, 4) if args.quick else (1, 16, 64)
    args.concurrency = (1, 4) if args.quick else (1, 4, 16, 64)
    args.hf_batches = (1,) if args.quick else (1, 16)
    if args.stage:
        run_stage(args, args.stage)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
