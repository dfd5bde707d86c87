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
