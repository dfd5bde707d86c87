"""Streaming text out of streamed token ids: incremental detokenization and stop strings.

`IncrementalDetokenizer` turns token ids into text deltas without ever emitting half a character,
for any tokenizer; `ByteLevelDetokenizer` does the same job faster for byte-level BPE tokenizers.
`StopStringMatcher` cuts the text at the first stop string and holds back any tail that might still
become one. The engine chains them: tokens -> detokenizer.add -> matcher.feed -> caller.
"""

from __future__ import annotations

import codecs
from typing import Callable, Iterable, Sequence

DecodeFn = Callable[[list[int]], str]

# Prompt tokens decoded as left context of the first generated token: enough for decoders whose
# output for a token depends on its neighbours (sentencepiece's leading "▁" is dropped at the start
# of a text), few enough to keep each decode call cheap. vLLM uses the same number.
PROMPT_CONTEXT_TOKENS = 5
# A UTF-8 character spans at most 4 byte tokens: how far the context may reach further back so
# that it does not start in the middle of a character.
_MAX_CHAR_TOKENS = 4

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decode a growing token sequence into text deltas.

    Each `add` decodes a short window: the tokens emitted by the previous emitting call (the
    "prefix") plus every token since (the prefix-offset/read-offset technique of HF and vLLM). The new text is the window's
    decode minus the prefix's decode. Decoding the prefix again, instead of decoding the new tokens
    alone, keeps context-dependent decoding right (sentencepiece drops a leading space at the start
    of a decoded text; byte-level BPE tokens may hold part of a UTF-8 character). While the decoded
    window ends in U+FFFD, the last character is incomplete and nothing is emitted; the offsets then
    stay put so the next tokens complete it.

    Guarantee: `"".join(deltas) + flush() == decode(all generated ids)` when there is no prompt;
    with a prompt, the deltas continue the prompt's text (the first keeps the space that separates
    it from the prompt). This holds for byte-level BPE for any ids, and for sentencepiece with byte
    fallback whenever byte tokens spell valid UTF-8. One exception: when a model emits a broken
    character right after byte tokens that already formed valid text, `tokenizers`' ByteFallback
    decoder turns the whole run of byte tokens into U+FFFD, while the deltas keep the valid part
    (text already streamed cannot be taken back; it is also the better decoding).
    """

    def __init__(self, decode_fn: DecodeFn, prompt_ids: Sequence[int] | None = None) -> None:
        """`decode_fn(ids) -> str` is the tokenizer's decode; `prompt_ids` give left context."""
        self._decode = decode_fn
        prompt = [int(t) for t in (prompt_ids or [])]
        start = max(0, len(prompt) - PROMPT_CONTEXT_TOKENS)
        # Do not start the context inside a character: its orphaned bytes would decode as U+FFFD
        # and, with ByteFallback, spoil the byte tokens that follow them.
        lowest = max(0, start - _MAX_CHAR_TOKENS)
        while start > lowest and decode_fn(prompt[start:]).startswith(_REPLACEMENT):
            start -= 1
        # The window: tokens already emitted (the prefix, up to _read_offset), then pending ones.
        self._ids = prompt[start:]
        self._read_offset = len(self._ids)

    @property
    def pending(self) -> bool:
        """True when tokens were added whose text is held back (an incomplete character)."""
        return self._read_offset < len(self._ids)

    def add(self, token_ids: Iterable[int]) -> str:
        """Append generated tokens; return the text they complete (possibly "")."""
        self._ids.extend(int(t) for t in token_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """Return any held-back text, replacement characters included (end of generation)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[:self._read_offset])
        full_text = self._decode(self._ids)
        if not final and full_text.endswith(_REPLACEMENT):
            return ""  # the last character is incomplete: wait for the tokens that finish it
        if len(full_text) <= len(prefix_text) and not final:
            return ""  # e.g. a token that decodes to nothing yet; keep it in the window
        delta = full_text[len(prefix_text):]
        # The tokens just emitted become the next prefix; older ones are never decoded again.
        self._ids = self._ids[self._read_offset:]
        self._read_offset = len(self._ids)
        return delta


# GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves; the other 68 bytes
# (controls, space, NBSP, soft hyphen, ...) are written as the characters U+0100..U+0143.
_PRINTABLE = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
_STAND_INS = [b for b in range(256) if b not in _PRINTABLE]
# str.translate table taking a token's characters to the Latin-1 characters of their bytes. A raw
# character among those 68 bytes is not part of the alphabet: it becomes U+FFFF, which Latin-1
# cannot encode, sending the token down the fallback path as it does in `tokenizers`.
_TO_LATIN1 = {0x100 + i: b for i, b in enumerate(_STAND_INS)} | {b: 0xFFFF for b in _STAND_INS}


def byte_level_bytes(token: str) -> bytes:
    """The bytes `tokenizers`' ByteLevel decoder makes of one token: each character's byte when
    all of them are in the byte-level alphabet, else the token's own UTF-8 (added tokens such as
    "<|im_end|>" or ones with raw spaces)."""
    try:
        return token.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return token.encode()


class TokenBytes(dict):
    """token id -> `byte_level_bytes` of its token, filled on first use: building the whole table
    (50-150k tokens) would add tens of ms to every engine load. Ids the tokenizer does not know
    decode to nothing, as in `tokenizers`."""

    def __init__(self, id_to_token: Callable[[int], str | None]) -> None:
        super().__init__()
        self._id_to_token = id_to_token

    def __missing__(self, token_id: int) -> bytes:
        token = self._id_to_token(token_id)
        piece = byte_level_bytes(token) if token is not None else b""
        self[token_id] = piece
        return piece


class ByteLevelDetokenizer:
    """`IncrementalDetokenizer` for byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM).

    Their decoder maps each token to bytes on its own, then the whole byte string to text (lossy
    UTF-8). So a stream needs no decode window and no prompt context: each token's bytes go through
    Python's incremental UTF-8 decoder, which holds an unfinished character back by itself. Output
    equals `tokenizers`' decode of the same ids (the tests compare them on random ids), at a
    fraction of the per-token cost: one dict lookup and one C call instead of two decodes.
    """

    def __init__(self, token_bytes: TokenBytes) -> None:
        self._bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    @property
    def pending(self) -> bool:
        """True when the bytes of an unfinished character are held back."""
        return bool(self._utf8.getstate()[0])

    def add(self, token_ids: Iterable[int]) -> str:
        """Append generated tokens; return the text they complete (possibly "")."""
        return self._utf8.decode(b"".join(map(self._bytes.__getitem__, token_ids)))

    def flush(self) -> str:
        """Return any held-back bytes as replacement characters (end of generation)."""
        return self._utf8.decode(b"", True)


class StopStringMatcher:
    """Cut a text stream at the first occurrence of any stop string.

    `feed(delta)` returns the text that is safe to emit now. Text that might be the start of a stop
    string is held back until the following deltas decide it. Once a stop string is found,
    `stopped` becomes True, `stop_string` names it, the text before it is returned, and the stop
    string and everything after it (in this and later deltas) are dropped. With no stop strings,
    every delta passes through unchanged.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stops)!r}")
        self._stops = list(dict.fromkeys(stops))
        self._held = ""
        self.stopped = False
        self.stop_string: str | None = None

    def feed(self, delta: str) -> str:
        """Add a text delta; return the text that can be emitted now (possibly "")."""
        if self.stopped:
            return ""
        text = self._held + delta
        hit = self._first_stop(text)
        # Hold the longest tail that may still grow into a stop string. It is also the earliest
        # place an unfinished stop can start, so a complete stop found after it may not be the
        # first one yet ("ab c" with stops " " and "b c").
        undecided = len(text) - self._longest_partial_suffix(text)
        if hit is not None and hit[0] <= undecided:
            position, stop = hit
            self.stopped, self.stop_string, self._held = True, stop, ""
            return text[:position]
        self._held = text[undecided:]
        return text[:undecided]

    def flush(self) -> str:
        """End of stream: release the held-back text, up to a stop string it may contain."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        hit = self._first_stop(held)  # a stop that waited on a longer, unfinished one
        if hit is not None:
            self.stopped, self.stop_string = True, hit[1]
            return held[:hit[0]]
        return held

    def _first_stop(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            position = text.find(stop)
            if position >= 0 and (best is None or position < best[0]):
                best = (position, stop)
        return best

    def _longest_partial_suffix(self, text: str) -> int:
        # Longest suffix of `text` that is a proper prefix of some stop string: it may still grow
        # into that stop string, so it must not be emitted yet.
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
