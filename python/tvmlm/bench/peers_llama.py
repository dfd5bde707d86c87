"""The llama.cpp peer, on llama-cpp-python's low-level API (llama_batch + llama_decode).

The high-level `Llama` class is not used: it can only switch flash attention on or off (llama.cpp's
own default is "auto"), and it serves one sequence at a time. Here the context is made from
`llama_context_default_params()` with the thread counts, sizes and, when asked, flash attention
set; everything else stays llama.cpp's default (f16 KV cache, n_ubatch 512).

Greedy tokens are the argmax of the last evaluated token's logits (`llama_get_logits_ith`), so the
harness can check them against the other peers. Concurrent decoding runs `n` sequences in one
context (n_seq_max = n, each its own seq_id) and decodes one token of every sequence per
`llama_decode` call, the way llama.cpp's own server batches.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

import numpy as np

FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # LLAMA_FLASH_ATTN_TYPE_*
N_BATCH = 2048  # tokens per llama_decode call at prefill (llama.cpp's default n_batch)


class LlamaCppPeer:
    def __init__(self, model: str, threads: int, flash_attn: str, max_len: int, max_seqs: int = 1):
        t0 = time.perf_counter()
        import llama_cpp as L

        self.L = L
        self._quiet = L.llama_log_callback(lambda level, text, data: None)  # kept alive: C holds it
        L.llama_log_set(self._quiet, ctypes.c_void_p(0))
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(model.encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model}")
        params = L.llama_context_default_params()
        params.n_ctx = max_len * max_seqs
        params.n_batch = min(N_BATCH, params.n_ctx)
        params.n_ubatch = min(params.n_ubatch, params.n_batch)
        params.n_seq_max = max_seqs
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = FLASH_ATTN[flash_attn]
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create its context")
        self.load_s = time.perf_counter() - t0  # import + load + context: as a fresh process pays
        self.vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.max_seqs = max_seqs
        self.batch = L.llama_batch_init(max(params.n_batch, max_seqs), 0, max_seqs)
        self.info = {"flash_attn": flash_attn, "threads": threads, "n_ctx": L.llama_n_ctx(self.ctx),
                     "n_ubatch": params.n_ubatch, "kv_dtype": "float16"}

    # ---- one llama_decode call ---------------------------------------------------------------
    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, seq_id, wants logits)."""
        b = self.batch
        for i, (tok, pos, seq, out) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = out
        b.n_tokens = len(entries)
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self, i: int) -> int:
        row = np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.vocab,))
        return int(np.argmax(row))

    def _clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def _prefill(self, ids: list[int], seq: int = 0) -> int:
        """Evaluate a prompt in n_batch chunks; the greedy next token."""
        step = self.L.llama_n_batch(self.ctx)
        for start in range(0, len(ids), step):
            chunk = ids[start:start + step]
            last = start + len(chunk) == len(ids)
            self._decode([(t, start + i, seq, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
        return self._argmax(-1)

    # ---- what the harness measures -------------------------------------------------------------
    def prefill_seconds(self, ids: list[int]) -> float:
        """Time to the first token of a fresh prompt (an empty cache)."""
        self._clear()
        t0 = time.perf_counter()
        self._prefill(ids)
        return time.perf_counter() - t0

    def decode(self, ids: list[int], n: int) -> tuple[list[int], float]:
        """(greedy tokens, decode tokens/s over the tokens after the first)."""
        self._clear()
        tokens = [self._prefill(ids)]
        t0 = time.perf_counter()
        for k in range(n - 1):
            self._decode([(tokens[-1], len(ids) + k, 0, True)])
            tokens.append(self._argmax(-1))
        seconds = time.perf_counter() - t0
        return tokens, (n - 1) / seconds if n > 1 else float("nan")

    def concurrent(self, prompts: list[list[int]], n: int) -> float:
        """Seconds to generate n tokens for each of len(prompts) sequences decoded together
        (prefills included)."""
        if len(prompts) > self.max_seqs:
            raise ValueError(f"{len(prompts)} sequences but n_seq_max={self.max_seqs}")
        self._clear()
        t0 = time.perf_counter()
        last = [self._prefill(p, seq) for seq, p in enumerate(prompts)]
        pos = [len(p) for p in prompts]
        for _ in range(n - 1):
            self._decode([(tok, pos[s], s, True) for s, tok in enumerate(last)])
            last = [self._argmax(i) for i in range(len(prompts))]
            pos = [p + 1 for p in pos]
        return time.perf_counter() - t0

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)



def available() -> bool:
    """llama-cpp-python is installed (the `bench` extra)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None
