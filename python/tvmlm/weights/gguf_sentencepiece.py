"""SentencePiece vocabularies of GGUF files (`tokenizer.ggml.model == "llama"`), rebuilt as a
`tokenizers.Tokenizer`: a BPE with byte fallback over `▁`-marked pieces, as transformers builds
it from the same file (`from_pretrained(..., gguf_file=...)`), so token ids are equal.

A GGUF stores the pieces, their scores and types, not merges. The merges are recovered from the
vocabulary: every split of a piece into two pieces that are both in the vocabulary is a merge,
ranked by the merged piece's score (Gemma: by its position in the file, which is its merge order).
Three spellings of the text side exist, chosen by architecture as transformers does:

- Llama / Mistral / TinyLlama ("llama"): `Metaspace` prepends `▁` to the first word and turns
  spaces into `▁`; decoding strips that one leading space again.
- Phi-3: the same through a normalizer (prepend + replace), no pre-tokenizer.
- Gemma: no prefix; spaces become `▁` and the text is split after each space; pieces made only of
  spaces are stored as real spaces in the file and are respelled as `▁`s.
"""

from __future__ import annotations

from typing import Any

from gguf import TokenType

_GEMMA = ("gemma", "gemma2", "gemma3")


def derive_merges(pieces: list[str], rank: dict[str, float]) -> list[tuple[str, str]]:
    """(left, right) merges implied by a vocabulary: each way of cutting a piece into two pieces
    that are in the vocabulary, best rank first (higher is better), ties broken by the left piece's
    length, then the right's (as transformers' `generate_merges`)."""
    index = {p: i for i, p in enumerate(pieces)}
    found = []
    for piece, score in rank.items():
        local = []
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                local.append((left, right, score))
        local.sort(key=lambda m: (index[m[0]], index[m[1]]))
        found.extend(local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def build_sentencepiece_tokenizer(meta: Any, arch: str):
    """A `tokenizers.Tokenizer` for the GGUF's SentencePiece vocabulary (`meta`: gguf._Metadata)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    pieces: list[str] = list(meta.get("tokenizer.ggml.tokens"))
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(pieces)
    gemma = arch in _GEMMA
    if gemma:
        # pieces of two or more spaces are stored as spaces; the normalizer spells spaces as ▁
        pieces = ["\u2581" * len(p) if " " in p and not p.strip() else p for p in pieces]
        rank = {p: -i for i, p in enumerate(pieces)}  # Gemma's file order is its merge order
    else:
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None:
            raise ValueError("the GGUF's SentencePiece vocabulary has no tokenizer.ggml.scores")
        rank = dict(zip(pieces, scores))
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = pieces[unk_id] if unk_id is not None else ("<unk>" if "<unk>" in pieces else None)
    vocab = {p: i for i, p in enumerate(pieces)}
    bpe = models.BPE(vocab=vocab, merges=derive_merges(pieces, rank), unk_token=unk if gemma else None,
                     fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(bpe)
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        tok.normalizer = normalizers.Replace(" ", "\u2581")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    elif arch == "phi3":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        decode.append(decoders.Strip(" ", 1, 0))
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    # control pieces (<s>, <start_of_turn>, ...) match whole and are skippable when decoding;
    # user-defined ones match whole but stay text
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, t in zip(pieces, types) if t == TokenType.CONTROL])
    tok.add_tokens([AddedToken(p, special=False, normalized=False) for p, t in zip(pieces, types) if t == TokenType.USER_DEFINED])
    return tok
