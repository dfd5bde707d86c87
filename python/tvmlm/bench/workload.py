"""What one benchmark job measures, the prompts it uses, and how samples are summarised.

Every peer gets the same token ids (drawn from the model's vocabulary, past the first 256 ids,
where the specials and byte tokens sit), so the figures and the greedy tokens compare directly.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

#: The prompt behind "decode at context 0": a few tokens, since a request needs at least one.
SHORT_PROMPT = 8
#: Prompt length of each concurrent request.
CONCURRENT_PROMPT = 32


@dataclass
class Workload:
    prefill: list[int] = field(default_factory=lambda: [128, 512, 2048])  # prompt lengths
    contexts: list[int] = field(default_factory=lambda: [0, 1024, 4096])  # decode after this many tokens
    decode_tokens: int = 64  # per decode measurement (and per concurrent request)
    concurrency: int = 16  # requests in flight at once (0: not measured)
    check_tokens: int = 32  # greedy tokens compared across peers (decode at the first context)

    def max_len(self) -> int:
        """KV slots one sequence needs for the longest prompt of the job plus its decode."""
        longest = max([SHORT_PROMPT, *self.prefill, *self.contexts])
        return longest + max(self.decode_tokens, self.check_tokens) + 16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt(length: int, vocab: int, seed: int) -> list[int]:
    """Deterministic token ids; one seed per use, so no two prompts share a prefix (a shared prefix
    would be a prefix-cache hit for tvmlm and not for the others)."""
    rng = random.Random(seed * 100003 + length)
    low = 256 if vocab > 512 else 3  # tiny test vocabularies: past their 3 specials
    return [rng.randrange(low, vocab) for _ in range(max(1, length))]


def context_prompt(context: int, vocab: int) -> list[int]:
    return prompt(max(SHORT_PROMPT, context), vocab, seed=7)


def summary(samples: list[float]) -> dict[str, Any]:
    """Median and spread (min, max, and the quartiles when there are 4+ samples)."""
    xs = sorted(x for x in samples if x == x)
    if not xs:
        return {"n": 0}
    out: dict[str, Any] = {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs)}
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4)
        out["q1"], out["q3"] = q[0], q[2]
    return out


def match_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy generations share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
