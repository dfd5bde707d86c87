"""Load run for `tvmlm serve`: C concurrent openai clients x R chat requests each, mixed streamed /
whole / aborted mid-stream, against the HTTP server, then the same load on the in-process Engine.

    python -m tvmlm.bench.serve_load                       # SmolLM2, 64 clients x 20 requests, both
    python -m tvmlm.bench.serve_load --target http --clients 8 --requests 5 --model PATH

Per target: requests ok / aborted (as asked) / lost / hung / server errors, generated tokens (the
engine's own counter), wall time, tokens/s and client-side TTFT p50/p99 of the streamed requests.
Greedy with ignore_eos, so both targets generate the same tokens. Exits 1 if any request was lost,
hung or got a 5xx. lost: ended without a finish reason it did not ask for; hung: no answer within
--timeout. The load generator runs on the same machine as the engine (its CPU is taken from both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

WORDS = ("the old lighthouse keeper climbed the spiral stairs every evening ships passing in the night "
         "trusted his light children played by the harbour a program is a list of instructions").split()


@dataclass
class Job:
    kind: str  # stream | whole | abort
    prompt: str
    max_tokens: int
    abort_after: int


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)
    ttft: list[float] = field(default_factory=list)


def jobs_for(clients: int, requests: int, seed: int = 0) -> list[list[Job]]:
    rng = random.Random(seed)
    return [[Job(("stream", "whole", "abort")[(c + r) % 3], " ".join(rng.choices(WORDS, k=rng.randint(8, 40))),
                 rng.randint(16, 48), rng.randint(1, 4)) for r in range(requests)] for c in range(clients)]


def _messages(job: Job) -> list[dict[str, str]]:
    return [{"role": "user", "content": job.prompt}]


def _finished(kind: str, finish: str | None) -> str:
    if kind == "abort":
        return "aborted"
    return "ok" if finish in ("stop", "length") else "lost"


# ---- over HTTP, with the openai client -----------------------------------------------------------
async def _http_request(client, model: str, job: Job, tally: Tally) -> None:
    import openai

    kw = dict(model=model, messages=_messages(job), max_tokens=job.max_tokens, temperature=0.0,
              extra_body={"ignore_eos": True})
    t0 = time.perf_counter()
    try:
        if job.kind == "whole":
            r = await client.chat.completions.create(**kw)
            tally.outcomes[_finished("whole", r.choices[0].finish_reason)] += 1
            return
        stream = await client.chat.completions.create(**kw, stream=True)
        finish, seen = None, 0
        async for chunk in stream:
            if seen == 0:
                tally.ttft.append(time.perf_counter() - t0)
            seen += 1
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if job.kind == "abort" and seen >= job.abort_after:
                await stream.close()
                break
        tally.outcomes[_finished(job.kind, finish)] += 1
    except openai.APITimeoutError:
        tally.outcomes["hung"] += 1
    except openai.APIStatusError as exc:
        tally.outcomes["5xx" if exc.status_code >= 500 else f"http {exc.status_code}"] += 1
    except openai.APIError as exc:  # an error event mid-stream, or a dropped connection
        tally.outcomes[f"error: {type(exc).__name__}"] += 1


async def _http_load(url: str, model: str, jobs: list[list[Job]], timeout: float) -> Tally:
    import openai

    tally = Tally()

    async def client(mine: list[Job]) -> None:
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=timeout) as c:
            for job in mine:
                await _http_request(c, model, job, tally)

    await asyncio.gather(*[client(mine) for mine in jobs])
    return tally


def run_http(model_path: str, jobs: list[list[Job]], timeout: float, serve_args: list[str]) -> tuple[Tally, float, int]:
    import httpx

    from ..server.process import ServerProcess

    srv = ServerProcess(model_path, "--served-model-name", "load", "--log-level", "warning", *serve_args)
    try:
        def generated() -> int:
            for line in httpx.get(srv.base + "/metrics").text.splitlines():
                if line.startswith("tvmlm_generated_tokens_total "):
                    return int(float(line.split()[1]))
            raise RuntimeError("no tvmlm_generated_tokens_total in /metrics")

        before, t0 = generated(), time.perf_counter()
        tally = asyncio.run(_http_load(srv.url, "load", jobs, timeout))
        wall = time.perf_counter() - t0
        tokens = generated() - before
    finally:
        rc = srv.stop()
    if rc != 0:
        tally.outcomes[f"server exit {rc}"] += 1
    return tally, wall, tokens


# ---- in process, with the blocking Engine (one thread per client) ----------------------------------
def run_engine(model_path: str, jobs: list[list[Job]], timeout: float, mode: str) -> tuple[Tally, float, int]:
    from .. import Engine

    tally, lock = Tally(), threading.Lock()
    with Engine(model_path, mode=mode) as engine:
        def client(mine: list[Job]) -> None:
            for job in mine:
                kw = dict(messages=_messages(job), max_tokens=job.max_tokens, temperature=0.0, ignore_eos=True)
                t0 = time.perf_counter()
                if job.kind == "whole":
                    r = engine.chat.completions.create(**kw)
                    with lock:
                        tally.outcomes[_finished("whole", r.choices[0].finish_reason)] += 1
                    continue
                finish, seen = None, 0
                stream = engine.chat.completions.create(**kw, stream=True)
                for chunk in stream:
                    if seen == 0:
                        with lock:
                            tally.ttft.append(time.perf_counter() - t0)
                    seen += 1
                    finish = chunk.choices[0].finish_reason or finish
                    if job.kind == "abort" and seen >= job.abort_after:
                        stream.close()
                        break
                with lock:
                    tally.outcomes[_finished(job.kind, finish)] += 1

        before, t0 = engine.metrics()["generated_tokens"], time.perf_counter()
        threads = [threading.Thread(target=client, args=(mine,), daemon=True) for mine in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        wall = time.perf_counter() - t0
        tally.outcomes["hung"] += sum(t.is_alive() for t in threads)
        tokens = engine.metrics()["generated_tokens"] - before
    return tally, wall, tokens


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summarize(name: str, tally: Tally, wall: float, tokens: int) -> dict:
    o = tally.outcomes
    return {"target": name, "requests": sum(o.values()), "ok": o["ok"], "aborted": o["aborted"], "lost": o["lost"],
            "hung": o["hung"], "server_errors": o["5xx"], "other": {k: v for k, v in o.items()
                                                                   if k not in ("ok", "aborted", "lost", "hung", "5xx")},
            "generated_tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": round(1000 * _pct(tally.ttft, 0.5), 1), "ttft_p99_ms": round(1000 * _pct(tally.ttft, 0.99), 1),
            "ttft_mean_ms": round(1000 * statistics.fmean(tally.ttft), 1) if tally.ttft else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvmlm.bench.serve_load", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model path (default: the shipped SmolLM2 GGUF)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=20, help="requests per client")
    p.add_argument("--target", choices=["both", "http", "engine"], default="both")
    p.add_argument("--mode", default="server", help="engine preset on both sides (default: server)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds after which a request counts as hung")
    p.add_argument("--json", help="write the summaries here")
    args = p.parse_args(argv)
    if args.model is None:
        from ..default_model import default_model_path

        args.model = str(default_model_path())
    jobs = jobs_for(args.clients, args.requests)
    rows = []
    if args.target in ("both", "http"):
        rows.append(summarize("http", *run_http(args.model, jobs, args.timeout, ["--mode", args.mode])))
        print(json.dumps(rows[-1]), flush=True)
    if args.target in ("both", "engine"):
        rows.append(summarize("engine", *run_engine(args.model, jobs, args.timeout, args.mode)))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) == 2:
        print(f"http/engine throughput: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = sum(r["lost"] + r["hung"] + r["server_errors"] + sum(r["other"].values()) for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
