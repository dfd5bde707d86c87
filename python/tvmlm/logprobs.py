"""Logprobs in OpenAI's shapes.

The core reports, per token, `(token, logprob, top_tokens, top_logprobs)`: the log-softmax of the
distribution the token was drawn from (docs/contracts.md) and the most likely alternatives, best
first. Chat responses carry them as `ChoiceLogprobs` (token text, UTF-8 bytes, logprob, the
alternatives); text completions as OpenAI's legacy parallel lists (`CompletionLogprobs`), where the
alternatives are a dict that always holds the chosen token too (so up to `logprobs + 1` entries).
"""

from __future__ import annotations

from typing import Any, Sequence

from . import protocol

#: One token's entry as the core delivers it (`_core.Delta.logprobs` items).
Entry = tuple[int, float, Sequence[int], Sequence[float]]


class TokenTexts:
    """token id -> (text, UTF-8 bytes) of that token alone, cached per engine."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._tokenizer.token_bytes(token_id)
            text = raw.decode("utf-8", errors="replace")
            hit = self._cache[token_id] = (text, list(raw))
        return hit


def chat_logprobs(entries: Sequence[Entry], texts: TokenTexts) -> protocol.ChoiceLogprobs:
    """A chat choice's (or chunk's) `logprobs` for these tokens."""
    content = []
    for token, logprob, top_tokens, top_logprobs in entries:
        text, raw = texts(token)
        tops = []
        for t, lp in zip(top_tokens, top_logprobs):
            t_text, t_raw = texts(t)
            tops.append(protocol.TopLogprob(token=t_text, bytes=t_raw, logprob=lp))
        content.append(protocol.ChatCompletionTokenLogprob(token=text, bytes=raw, logprob=logprob,
                                                           top_logprobs=tops))
    return protocol.ChoiceLogprobs(content=content)


def completion_logprobs(
    entries: Sequence[Entry], texts: TokenTexts, *, text_offset: int = 0,
    first_token: int | None = None,
) -> protocol.CompletionLogprobs:
    """A text choice's (or chunk's) `logprobs`: `first_token` (echo: the prompt's first token,
    which has no logprob) comes first; `text_offset` is where the first token's text starts."""
    out = protocol.CompletionLogprobs()
    offset = text_offset

    def add(token: int, logprob: float | None, top: dict[str, float] | None) -> None:
        nonlocal offset
        text, _ = texts(token)
        out.tokens.append(text)
        out.token_logprobs.append(logprob)
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(text)

    if first_token is not None:
        add(first_token, None, None)
    for token, logprob, top_tokens, top_logprobs in entries:
        top = {texts(t)[0]: lp for t, lp in zip(top_tokens, top_logprobs)}
        top.setdefault(texts(token)[0], logprob)
        add(token, logprob, top)
    return out


def join_completion_logprobs(head: protocol.CompletionLogprobs | None,
                             tail: protocol.CompletionLogprobs) -> protocol.CompletionLogprobs:
    """`head` (echo: the prompt's) followed by `tail`; offsets are already absolute."""
    if head is None:
        return tail
    return protocol.CompletionLogprobs(
        text_offset=head.text_offset + tail.text_offset,
        token_logprobs=head.token_logprobs + tail.token_logprobs,
        tokens=head.tokens + tail.tokens, top_logprobs=head.top_logprobs + tail.top_logprobs)
