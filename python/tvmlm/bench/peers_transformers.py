"""The transformers peer (float32, eager PyTorch): the reference for greedy tokens, and a speed
figure for the plain-PyTorch path. A .gguf file is dequantized by transformers on load."""

from __future__ import annotations

import time
from pathlib import Path


class TransformersPeer:
    def __init__(self, model: str, threads: int, max_len: int, max_seqs: int = 1):
        t0 = time.perf_counter()
        import torch
        import transformers as tf

        torch.set_num_threads(threads)
        path = Path(model)
        kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
        src = path.parent if path.suffix == ".gguf" else path
        self.model = tf.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kwargs).eval()
        self.load_s = time.perf_counter() - t0
        self.vocab = self.model.config.vocab_size
        self.torch = torch
        self.info = {"threads": threads, "kv_dtype": "float32"}

    def prefill_seconds(self, ids: list[int]) -> float:
        with self.torch.no_grad():
            t0 = time.perf_counter()
            self.model(self.torch.tensor([ids]), use_cache=True)
            return time.perf_counter() - t0

    def decode(self, ids: list[int], n: int) -> tuple[list[int], float]:
        """Greedy decode with the KV cache, one token per forward: (tokens, tokens/s after the first)."""
        torch = self.torch
        with torch.no_grad():
            out = self.model(torch.tensor([ids]), use_cache=True)
            tokens = [int(out.logits[0, -1].argmax())]
            t0 = time.perf_counter()
            for _ in range(n - 1):
                out = self.model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
                tokens.append(int(out.logits[0, -1].argmax()))
            seconds = time.perf_counter() - t0
        return tokens, (n - 1) / seconds if n > 1 else float("nan")

    def concurrent(self, prompts: list[list[int]], n: int) -> float:
        """Seconds for n tokens each, static batching of equal-length prompts: transformers' best
        case for throughput."""
        torch = self.torch
        with torch.no_grad():
            ids = torch.tensor(prompts)
            t0 = time.perf_counter()
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=0)
            return time.perf_counter() - t0

    def close(self) -> None:
        pass
