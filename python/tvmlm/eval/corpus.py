"""The evaluation text and its windows of token ids.

corpus.txt is public-domain English: the Declaration of Independence (the text of the 1776
Dunlap broadside) followed by the Gettysburg Address (the Bliss copy), about 9.6 KB, 2,100
SmolLM2 tokens.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def default_corpus() -> str:
    return resources.files(__package__).joinpath("corpus.txt").read_text(encoding="utf-8")


def read_corpus(path: str | Path | None) -> str:
    return default_corpus() if path is None else Path(path).read_text(encoding="utf-8")


def windows(ids: list[int], ctx: int, max_tokens: int, prefix: list[int] = ()) -> list[list[int]]:
    """Non-overlapping windows of at most `ctx` tokens: `prefix` (the tokenizer's BOS, if it adds
    one) then the next corpus tokens, until `max_tokens` corpus tokens are used. Each window scores
    every token after its first, so a window needs at least two tokens."""
    prefix = list(prefix)
    step = ctx - len(prefix)
    if step < 1 or ctx < 2:
        raise ValueError(f"ctx={ctx} leaves no room for corpus tokens after the prefix {prefix}")
    ids = list(ids)[:max_tokens]
    out = []
    for start in range(0, len(ids), step):
        window = prefix + ids[start:start + step]
        if len(window) >= 2:
            out.append(window)
    return out
