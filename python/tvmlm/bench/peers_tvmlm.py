"""The tvmlm peer: one `tvmlm.Engine` on the CPU, driven the way a serving caller drives it.

Prefill and batch-1 decode go through the engine's request path (`Generator.submit` and the
per-request inbox that the public API streams from), so the greedy token ids come back as they
are; concurrent requests use the public `completions.create` from one thread each. The thread
count comes from the job (TVM_NUM_THREADS is set by the parent as well, so TVM's pool is sized
before it starts).
"""

from __future__ import annotations

import threading
import time
from typing import Any


# Tokens per prefill step: llama.cpp's default n_ubatch, the chunk its compute buffer is sized for,
# so that both engines hold one chunk's activations and peak RSS compares like with like.
PREFILL_CHUNK = 512


class TvmlmPeer:
    def __init__(self, model: str, threads: int, kv_dtype: str | None, max_len: int, max_seqs: int = 1):
        t0 = time.perf_counter()
        from tvmlm import Engine, EngineConfig

        config = EngineConfig(
            max_num_sequence=max_seqs,
            max_total_sequence_length=max_len * max_seqs,
            prefill_chunk_size=min(PREFILL_CHUNK, max_len * max_seqs),
            num_threads=threads,
            kv_dtype=kv_dtype,
        )
        self.engine = Engine(model, device="cpu", engine_config=config)
        self.load_s = time.perf_counter() - t0  # import + construct: what a fresh serving process pays
        self.vocab = int(self.engine.metadata["vocab_size"])
        self.info = {"kv_dtype": self.engine.config.kv_dtype, "threads": self.engine.config.num_threads}
        self.last_itl = 0.0

    def _stream(self, ids: list[int], max_tokens: int):
        """Yield (arrival time, token ids) per delta of a greedy request (EOS ignored). The final
        delta's core-measured mean inter-token latency is left in `self.last_itl`."""
        from tvmlm import protocol

        gen = self.engine.generator
        req = protocol.CompletionRequest.parse(
            {"prompt": ids, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True, "stream": True})
        _, inbox = gen.submit(ids, gen.generation_config(ids, req), stream=True)
        done = False
        while not done:
            deltas = inbox.take()
            now = time.perf_counter()
            if not deltas:
                raise RuntimeError("the engine closed the request")
            for d in deltas:
                if d.finish_reason == "error":
                    raise RuntimeError(f"request failed: {d.error}")
                if d.finish_reason is not None:
                    done, self.last_itl = True, d.inter_token_latency
                if d.token_ids:
                    yield now, list(d.token_ids)

    def prefill_seconds(self, ids: list[int]) -> float:
        """Time to the first token of a fresh prompt."""
        t0 = time.perf_counter()
        for now, _ in self._stream(ids, 1):
            return now - t0
        raise RuntimeError("no token came back")

    def decode(self, ids: list[int], n: int) -> tuple[list[int], float]:
        """(greedy tokens, decode tokens/s over the tokens after the first), timed by arrival. When
        the later tokens all arrive with the first (a tiny model outruns the consumer, so the deltas
        coalesce) arrival times say nothing: the core's inter-token latency is the rate then."""
        tokens, first, last, later, self.last_itl = [], None, None, 0, 0.0
        for now, got in self._stream(ids, n):
            if first is None:
                first, later = now, len(got) - 1
            else:
                later += len(got)
            last = now
            tokens += got
        if last is not None and first is not None and last > first:
            return tokens, later / (last - first)
        return tokens, 1.0 / self.last_itl if self.last_itl > 0 else float("nan")

    def concurrent(self, prompts: list[list[int]], n: int) -> float:
        """Seconds to generate n tokens for every prompt, all in flight at once (prefills included)."""
        counts: list[int] = []
        errors: list[BaseException] = []

        def one(p: list[int]) -> None:
            try:
                r = self.engine.completions.create(prompt=p, max_tokens=n, temperature=0.0, ignore_eos=True)
                counts.append(r.usage.completion_tokens)
            except BaseException as exc:  # noqa: BLE001 - reported below, not swallowed
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        if errors:
            raise errors[0]
        if sum(counts) != n * len(prompts):
            raise RuntimeError(f"generated {sum(counts)} tokens, expected {n * len(prompts)}")
        return seconds

    def close(self) -> None:
        self.engine.terminate()


def cold_load(model: str, threads: int, kv_dtype: str | None, max_len: int) -> dict[str, Any]:
    """Load on the compile cache the parent pointed TVMLM_CACHE_DIR at (empty for a cold load)."""
    peer = TvmlmPeer(model, threads, kv_dtype, max_len)
    out = {"load_s": peer.load_s, **peer.info}
    peer.close()
    return out
