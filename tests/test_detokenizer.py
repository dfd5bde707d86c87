"""IncrementalDetokenizer and StopStringMatcher, on real tokenizers trained here.

Two tokenizer styles: byte-level BPE (GPT-2/SmolLM2: any token may hold part of a UTF-8
character) and sentencepiece-style BPE with byte fallback (Llama-2: "▁" marks spaces, the decoder
drops the leading space of a text, unknown characters become <0xNN> byte tokens).
"""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tvmlm.detokenizer import (ByteLevelDetokenizer, IncrementalDetokenizer, StopStringMatcher,
                               TokenBytes, byte_level_bytes)

CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "你好，世界！我们今天去公园散步。",
    "Emoji time 😀😃🎉👍🏽 and 🇫🇷 flags",
    "naïve café résumé — “quotes”",
    "Привет мир",
    "def f(x):\n    return x + 1\n",
] * 20

TEXTS = [
    "Hello world!",
    "你好，世界！ 我们去公园。",
    "Emoji 😀😃 🎉👍🏽 and 🇫🇷 flags",
    "naïve café — “résumé”",
    "  leading spaces and trailing  ",
    "Привет мир 😀你好 mixed\nlines\n",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 outside the corpus ✓ ∑",
]


@pytest.fixture(scope="module")
def byte_level() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(scope="module")
def sentencepiece() -> Tokenizer:
    # Words start with "▁"; merges stay inside words, as sentencepiece's do.
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre
    # A small alphabet so that many characters (even ASCII ones) go through byte fallback.
    base.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, limit_alphabet=50,
                                                         show_progress=False))
    spec = json.loads(base.to_str())["model"]
    vocab = dict(spec["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, byte_fallback=True))
    tok.pre_tokenizer = pre
    # Llama-2's decoder: spaces back, bytes fused into text, the text's leading space dropped.
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return tok


class ByteTable:
    """A byte-level tokenizer that the tests stream through ByteLevelDetokenizer (the fast path)
    instead of the decode-window IncrementalDetokenizer."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.token_bytes = TokenBytes(tok.id_to_token)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def make_detokenizer(tok, prompt=None):
    if isinstance(tok, ByteTable):
        return ByteLevelDetokenizer(tok.token_bytes)
    return IncrementalDetokenizer(tok.decode, prompt_ids=prompt)


@pytest.fixture(params=["byte_level", "byte_level_table", "sentencepiece"])
def tokenizer(request):
    if request.param == "byte_level_table":
        return ByteTable(request.getfixturevalue("byte_level"))
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["window", "table"])
def any_byte_level(request, byte_level):
    """The byte-level tokenizer through either detokenizer."""
    return ByteTable(byte_level) if request.param == "table" else byte_level


def stream(tok: Tokenizer, ids: list[int], rng: random.Random | None = None,
           prompt: list[int] | None = None) -> tuple[list[str], str]:
    """Feed ids in random-sized groups; return (deltas, flushed tail)."""
    detok = make_detokenizer(tok, prompt)
    deltas, i = [], 0
    while i < len(ids):
        step = rng.randint(1, 4) if rng else 1
        deltas.append(detok.add(ids[i:i + step]))
        i += step
    return deltas, detok.flush()


def test_tokenizers_split_characters_across_tokens(byte_level, sentencepiece):
    # The tests below only mean something if single tokens decode to partial characters.
    for tok in (byte_level, sentencepiece):
        pieces = [tok.decode([i]) for i in tok.encode("😀 𝔘 你好").ids]
        assert any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("text", TEXTS)
def test_encoded_text_streams_back_exactly(tokenizer, text):
    ids = tokenizer.encode(text).ids
    deltas, tail = stream(tokenizer, ids)
    assert "".join(deltas) + tail == tokenizer.decode(ids)
    assert tail == ""  # valid text never ends on a held-back partial character
    assert not any("\ufffd" in d for d in deltas)


def test_partial_character_is_held_until_complete(sentencepiece):
    ids = sentencepiece.encode("x𝔘").ids  # 𝔘 is not in the corpus: four byte tokens
    assert [sentencepiece.id_to_token(i) for i in ids[-4:]] == ["<0xF0>", "<0x9D>", "<0x94>",
                                                                "<0x98>"]
    detok = IncrementalDetokenizer(sentencepiece.decode)
    assert detok.add(ids[:-4]) == "x"
    for token in ids[-4:-1]:
        assert detok.add([token]) == ""
    assert detok.pending
    assert detok.add([ids[-1]]) == "𝔘"
    assert not detok.pending and detok.flush() == ""


def test_leading_space_after_a_prompt_is_kept(sentencepiece):
    ids = sentencepiece.encode("Hello world").ids
    split = next(k for k in range(1, len(ids)) if sentencepiece.decode(ids[:k]) == "Hello")
    prompt, generated = ids[:split], ids[split:]
    with_prompt = "".join(stream(sentencepiece, generated, prompt=prompt)[0])
    without_prompt = "".join(stream(sentencepiece, generated)[0])
    assert with_prompt == " world"  # continues the prompt's text
    assert without_prompt == "world"  # a text of its own: the decoder drops the leading space


def test_random_token_sequences_concatenate_to_decode(any_byte_level):
    # Arbitrary ids: invalid UTF-8 runs, lone continuation bytes, CJK/emoji pieces.
    rng = random.Random(1234)
    vocab_size = any_byte_level.get_vocab_size()
    for _ in range(400):
        ids = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 40))]
        deltas, tail = stream(any_byte_level, ids, rng)
        assert "".join(deltas) + tail == any_byte_level.decode(ids), ids


def test_random_byte_fallback_sequences_concatenate_to_decode(sentencepiece):
    # Random word tokens mixed with byte-token runs that spell whole characters, as a model
    # emits them, sometimes ending on a cut character (held back, then flushed).
    rng = random.Random(4321)
    vocab = sentencepiece.get_vocab()
    words = [i for t, i in vocab.items() if not t.startswith("<0x")]
    chars = ["𝔘", "Ж", "好", "✓", "é", "H", "p", "😀"]
    for _ in range(400):
        ids: list[int] = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.5:
                ids.append(rng.choice(words))
            else:
                ids += [vocab[f"<0x{b:02X}>"] for b in rng.choice(chars).encode()]
        if rng.random() < 0.3:  # after a word token (see the ByteFallback caveat in the class)
            cut = "€".encode()[:rng.randint(1, 2)]
            ids += [rng.choice(words)] + [vocab[f"<0x{b:02X}>"] for b in cut]
        deltas, tail = stream(sentencepiece, ids, rng)
        assert "".join(deltas) + tail == sentencepiece.decode(ids), ids


def test_random_texts_stream_without_replacement_chars(tokenizer):
    rng = random.Random(99)
    alphabet = list("abc xyz,!\n") + list("你好世界") + ["😀", "🎉", "👍🏽", "é", "Ж", "𝔘", "✓"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        ids = tokenizer.encode(text).ids
        deltas, tail = stream(tokenizer, ids, rng)
        assert "".join(deltas) + tail == tokenizer.decode(ids)
        assert not any("\ufffd" in d for d in deltas), (text, deltas)


def test_prompt_context_continues_the_prompt_text(tokenizer):
    rng = random.Random(7)
    for text in TEXTS:
        ids = tokenizer.encode(text).ids
        full = tokenizer.decode(ids)
        for split in range(1, len(ids)):
            head = tokenizer.decode(ids[:split])
            if head.endswith("\ufffd") or not full.startswith(head):
                continue  # the prompt ends inside a character: no clean continuation exists
            deltas, tail = stream(tokenizer, ids[split:], rng, prompt=ids[:split])
            assert "".join(deltas) + tail == full[len(head):], (text, split)


def test_flush_releases_an_unfinished_character(any_byte_level):
    ids = any_byte_level.encode("😀").ids
    assert len(ids) > 1
    detok = make_detokenizer(any_byte_level)
    assert detok.add(ids[:1]) == "" and detok.pending
    assert detok.flush() == any_byte_level.decode(ids[:1])  # replacement char(s): the bytes were cut
    assert detok.flush() == "" and detok.add([]) == ""


def test_byte_table_matches_decode_with_added_and_special_tokens(byte_level):
    """Added tokens bypass the byte-level alphabet when they hold characters outside it (raw
    spaces, non-Latin-1 text); `tokenizers` then decodes them as their own UTF-8."""
    tok = Tokenizer.from_str(byte_level.to_str())
    tok.add_special_tokens(["<|im_end|>", "<|tool call|>"])
    tok.add_tokens(["hello world", "naïve✓", "\t tab", "\u0120x y", "nb\u00a0sp"])
    table = TokenBytes(tok.id_to_token)
    rng = random.Random(5)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    added = list(range(vocab_size - 7, vocab_size))
    for _ in range(400):
        ids = [rng.choice(added) if rng.random() < 0.3 else rng.randrange(vocab_size) for _ in range(rng.randint(1, 12))]
        detok = ByteLevelDetokenizer(table)
        text = "".join(detok.add([i]) for i in ids) + detok.flush()
        assert text == tok.decode(ids, skip_special_tokens=False), ids
    assert table[10**9] == b""  # unknown ids decode to nothing, as in tokenizers
    assert byte_level_bytes("\u0120hi") == b" hi" and byte_level_bytes("a b") == b"a b"
    # One raw character outside the alphabet sends the whole token to its UTF-8 (Ġ stays Ġ).
    assert byte_level_bytes("\u0120a b") == "\u0120a b".encode()
    assert byte_level_bytes("nb\u00a0sp") == "nb\u00a0sp".encode()


# --------------------------------------------------------------------------------------------
# StopStringMatcher
# --------------------------------------------------------------------------------------------

def feed_all(matcher: StopStringMatcher, pieces: list[str]) -> list[str]:
    return [matcher.feed(p) for p in pieces]


def test_stop_string_inside_one_delta():
    m = StopStringMatcher(["STOP"])
    assert m.feed("Hello STOP world") == "Hello "
    assert m.stopped and m.stop_string == "STOP"
    assert m.feed("more") == "" and m.flush() == ""


def test_stop_string_split_across_deltas():
    m = StopStringMatcher(["</s>"])
    assert feed_all(m, ["abc<", "/", "s", ">tail"]) == ["abc", "", "", ""]
    assert m.stopped and m.stop_string == "</s>"


def test_partial_match_that_fails_is_released():
    m = StopStringMatcher(["ab"])
    assert m.feed("xa") == "x"
    assert m.feed("c") == "ac"
    assert not m.stopped
    assert m.feed("za") == "z"
    assert m.flush() == "a"  # end of stream: the held "a" was never a stop


def test_stop_waiting_on_a_longer_candidate_is_applied_at_flush():
    m = StopStringMatcher([" ", "c bb"])
    assert m.feed("c ") == ""  # " " is complete, but "c bb" would start earlier
    assert m.flush() == "c" and m.stopped and m.stop_string == " "


def test_earliest_stop_wins_and_overlaps_are_found():
    m = StopStringMatcher(["world", "lo w"])
    assert m.feed("hello world") == "hel" and m.stop_string == "lo w"
    m = StopStringMatcher(["aab"])
    assert feed_all(m, list("aaab")) == ["", "", "a", ""]
    assert m.stopped


def test_no_stop_strings_pass_everything_through():
    m = StopStringMatcher([])
    assert feed_all(m, ["a", "", "bc"]) == ["a", "", "bc"]
    assert m.flush() == "" and not m.stopped


def test_empty_stop_string_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(["ok", ""])


def test_random_streams_match_a_whole_text_search():
    rng = random.Random(5)
    for _ in range(2000):
        text = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 25)))
        stops = ["".join(rng.choice("ab c") for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(1, 3))]
        found = [text.find(s) for s in stops if s in text]
        expected = text[:min(found)] if found else text
        m, out, i = StopStringMatcher(stops), [], 0
        while i < len(text):
            step = rng.randint(1, 5)
            out.append(m.feed(text[i:i + step]))
            i += step
        out.append(m.flush())
        assert "".join(out) == expected, (text, stops)
        assert m.stopped == bool(found)
