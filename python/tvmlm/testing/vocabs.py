"""Tiny SentencePiece vocabularies for GGUF files: pieces, scores and token types as
llama.cpp's converter writes them for a Llama-2-style (or Gemma-style) SentencePiece model."""

from __future__ import annotations

from functools import lru_cache

from .hf_model import TRAIN_TEXT

# A multilingual text: Latin with accents, Cyrillic, Greek, CJK, emoji (byte fallback), digits,
# runs of spaces, newlines and a tab.
MULTILINGUAL_TEXT = (
    "Hello world! The capital of France is Paris.\n"
    "Ça va très bien, merci. Größe und Übermaß; niño, corazón.\n"
    "Привет, как дела? Γειά σου κόσμε.\n"
    "日本語のテキストと中文文本。 한국어 문장.\n"
    "Emoji: 🙂🚀 and  two  spaces,\tone tab, 12345 numbers.   trailing"
)


@lru_cache(maxsize=4)
def sentencepiece_vocab(vocab_size: int, style: str = "llama") -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, token types) of a BPE SentencePiece vocabulary of exactly `vocab_size`
    pieces trained on the tiny models' text: specials, the 256 byte pieces `<0xNN>`, then pieces
    best first (score = -rank). `style` "gemma" orders the specials as Gemma's
    (<pad> <eos> <bos> <unk>) and adds the control pieces of its chat template."""
    from tokenizers import SentencePieceBPETokenizer

    if style == "gemma":
        specials = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2), ("<start_of_turn>", 3), ("<end_of_turn>", 3)]
    else:
        specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    n_learned = vocab_size - len(specials) - 256
    trainer = SentencePieceBPETokenizer(add_prefix_space=True)
    trainer.train_from_iterator(TRAIN_TEXT.split("\n"), vocab_size=n_learned, min_frequency=1, show_progress=False)
    ranked = sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])
    reserved = {p for p, _ in specials}
    learned = [p for p, _ in ranked if p not in reserved][:n_learned]
    while len(learned) < n_learned:  # the text may not give enough merges: pad with rare pieces
        learned.append(f"\u2581x{len(learned)}")
    pieces = [p for p, _ in specials] + [f"<0x{b:02X}>" for b in range(256)] + learned
    types = [t for _, t in specials] + [6] * 256 + [1] * len(learned)
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(learned))]
    assert len(pieces) == vocab_size and len(set(pieces)) == vocab_size
    return pieces, scores, types


def add_sentencepiece_vocab(writer, vocab_size: int, style: str = "llama") -> dict[str, int]:
    """Write a SentencePiece vocabulary into a gguf.GGUFWriter; returns the special token ids."""
    pieces, scores, types = sentencepiece_vocab(vocab_size, style)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    ids = {"bos": pieces.index("<bos>" if style == "gemma" else "<s>"),
           "eos": pieces.index("<eos>" if style == "gemma" else "</s>"),
           "unk": pieces.index("<unk>")}
    writer.add_bos_token_id(ids["bos"])
    writer.add_eos_token_id(ids["eos"])
    writer.add_unk_token_id(ids["unk"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    return ids
