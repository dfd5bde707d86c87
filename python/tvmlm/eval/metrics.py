"""Per-position quality metrics of next-token distributions against a reference.

For logits rows z (engine) and r (reference) at positions whose next token is t:
    nll  = -log softmax(z)[t]                       (perplexity = exp(mean nll))
    KL   = sum_v softmax(r)_v (log softmax(r)_v - log softmax(z)_v)   (KL(ref || engine), nats)
    top1 = argmax z == argmax r
Sums run in float64, a block of rows at a time, so a [tokens x vocab] float64 array never exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROW_BLOCK = 64  # rows per float64 block: 64 x 49152 x 8 B = 25 MB


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclass
class Scores:
    """Running sums of one engine's metrics over the positions seen so far."""

    tokens: int = 0
    nll_sum: float = 0.0
    kl_sum: float = 0.0
    kl_max: float = 0.0
    top1_hits: int = 0

    def add(self, logits: np.ndarray, ref_logits: np.ndarray, targets: np.ndarray) -> None:
        """Add positions: logits and ref_logits [n, vocab] (the distributions after each position),
        targets [n] (the token that follows each)."""
        logits, ref_logits, targets = np.asarray(logits), np.asarray(ref_logits), np.asarray(targets)
        if logits.shape != ref_logits.shape or logits.shape[0] != targets.shape[0]:
            raise ValueError(f"shapes differ: logits {logits.shape}, reference {ref_logits.shape}, targets {targets.shape}")
        for start in range(0, targets.shape[0], ROW_BLOCK):
            rows = slice(start, start + ROW_BLOCK)
            lp, ref = log_softmax(logits[rows]), log_softmax(ref_logits[rows])
            t = targets[rows]
            self.nll_sum += float(-lp[np.arange(t.shape[0]), t].sum())
            kl = (np.exp(ref) * (ref - lp)).sum(axis=1)
            self.kl_sum += float(kl.sum())
            self.kl_max = max(self.kl_max, float(kl.max()))
            self.top1_hits += int((lp.argmax(axis=1) == ref.argmax(axis=1)).sum())
            self.tokens += t.shape[0]

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_sum / self.tokens)

    @property
    def kl(self) -> float:
        return self.kl_sum / self.tokens

    @property
    def top1(self) -> float:
        return self.top1_hits / self.tokens

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "ppl": self.ppl, "kl": self.kl, "kl_max": self.kl_max, "top1": self.top1}
