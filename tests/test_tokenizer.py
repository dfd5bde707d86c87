"""tvmlm.tokenizer / tvmlm.chat_template against transformers' tokenizers and apply_chat_template,
for tiny HF models, tiny GGUFs (tokenizer rebuilt from metadata) and SmolLM2's GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from tvmlm.chat_template import render_chat_template
from tvmlm.errors import ModelFileError
from tvmlm.testing import BOS_ID, EOS_ID, make_gguf_model, make_hf_model, smollm2_gguf_path
from tvmlm.tokenizer import Tokenizer
from tvmlm.weights import load

TEXTS = [
    "Hello world!",
    "12345",
    "The year 2024 had 365 days, not 366.",
    " leading space and trailing ",
    "emoji 😀🎉 and a flag 🇫🇷",
    "中文测试，你好世界。",
    "def f(x):\n    return x**2  # square\n\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "tabs\tand\nnewlines\r\n",
    "don't I'll we've THEY'RE",
    "  multiple   spaces  ",
    "x=1e-5; y=3.14159; z=0xFF",
    "<|endoftext|>text after special",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me a joke about 42 🐍."},
    ],
    [
        {"role": "user", "content": "  padded  "},
        {"role": "assistant", "content": "line one\nline two", "tool_calls": None},
        {"role": "user", "content": "中文?"},
    ],
]


def _hf_tokenizer(model_dir: Path, **kwargs):
    import transformers as tf

    tf.logging.set_verbosity_error()
    return tf.AutoTokenizer.from_pretrained(model_dir, **kwargs)


def _assert_same_tokenization(mine: Tokenizer, ref, texts=TEXTS):
    for text in texts:
        for special in (True, False):
            ids = mine.encode(text, add_special_tokens=special)
            assert ids == ref.encode(text, add_special_tokens=special), (text, special)
        assert mine.decode(ids) == ref.decode(ids), text
        assert mine.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), text


def _assert_same_chat(mine: Tokenizer, ref, conversations=CONVERSATIONS):
    for conv in conversations:
        for gen in (True, False):
            expected = ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert mine.apply_chat_template(conv, add_generation_prompt=gen) == expected


# ---------------------------------------------------------------------------------------------
# Tiny HF models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = make_hf_model("llama", tmp_path_factory.mktemp("tiny"), layers=1)
    out = load(d).tokenizer_dir(tmp_path_factory.mktemp("tok"))
    return Tokenizer(out), _hf_tokenizer(d), d


def test_tiny_tokenization_matches_transformers(tiny):
    mine, ref, _ = tiny
    assert mine.vocab_size == len(ref) == 611
    _assert_same_tokenization(mine, ref)


def test_tiny_chat_template_matches_transformers(tiny):
    mine, ref, _ = tiny
    _assert_same_chat(mine, ref)
    assert mine.bos_token_id == BOS_ID and mine.eos_token_ids == [EOS_ID]


def test_template_exception_matches_transformers(tiny):
    mine, ref, _ = tiny
    bad = [{"role": "tool", "content": "x"}]
    with pytest.raises(jinja2.TemplateError) as theirs:
        ref.apply_chat_template(bad, tokenize=False)
    with pytest.raises(jinja2.TemplateError, match="roles must be user or assistant, got tool") as ours:
        mine.apply_chat_template(bad)
    assert str(ours.value) == str(theirs.value)


def test_eos_ids_from_generation_config_and_config(tiny, tmp_path):
    _, _, d = tiny
    out = load(d).tokenizer_dir(tmp_path)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS_ID, 0, 5]}))
    (out / "config.json").write_text(json.dumps({"eos_token_id": 7, "bos_token_id": 9}))
    tok = Tokenizer(out)
    assert tok.eos_token_ids == [EOS_ID, 0, 5, 7]  # tokenizer_config's eos first, no duplicates
    assert tok.bos_token_id == BOS_ID  # tokenizer_config wins over config.json


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer(tmp_path)
    d = make_hf_model("llama", tmp_path / "m", layers=1)
    out = load(d).tokenizer_dir(tmp_path / "t")
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["chat_template"] = None
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(out).apply_chat_template([{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------------------------
# Tokenizers rebuilt from GGUF metadata


@pytest.mark.parametrize("pre", ["default", "qwen2", "llama-bpe"])
def test_tiny_gguf_tokenizer_matches_transformers(tiny, tmp_path, pre):
    _, hf_ref, d = tiny
    make_gguf_model(d, tmp_path / "m.gguf", "Q8_0", pre=pre)
    mine = Tokenizer(load(tmp_path / "m.gguf").tokenizer_dir(tmp_path / "tok"))
    ref = _hf_tokenizer(tmp_path, gguf_file="m.gguf")
    _assert_same_tokenization(mine, ref)
    if pre == "default":
        # the GGUF round trip reproduces the original tokenizer
        _assert_same_tokenization(mine, hf_ref)
        _assert_same_chat(mine, hf_ref)


def _rewrite_gguf(src: Path, dst: Path, **overrides) -> Path:
    """Copy a GGUF, replacing metadata values (keys with '.' spelled as '__')."""
    import gguf

    overrides = {k.replace("__", "."): v for k, v in overrides.items()}
    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = overrides.get(field.name, field.contents())
        sub_type = field.types[-1] if len(field.types) > 1 else None
        w.add_key_value(field.name, value, field.types[0], sub_type)
    for t in reader.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_gguf_llama_bpe_takes_whole_words_from_vocab(tiny, tmp_path):
    # Llama-3 (pre "llama-bpe") looks a pre-token up whole before merging (`ignore_merges`), as
    # llama.cpp does: a vocab entry that no merge can build must still be used.
    import gguf

    _, _, d = tiny
    src = make_gguf_model(d, tmp_path / "m.gguf", "F32")
    fields = gguf.GGUFReader(src).fields
    tokens = fields["tokenizer.ggml.tokens"].contents() + ["Ġzqxjv"]
    types = fields["tokenizer.ggml.token_type"].contents() + [1]
    found = {}
    for pre in ("default", "llama-bpe"):
        p = _rewrite_gguf(src, tmp_path / f"{pre}.gguf", tokenizer__ggml__tokens=tokens,
                          tokenizer__ggml__token_type=types, tokenizer__ggml__pre=pre)  # fmt: skip
        found[pre] = Tokenizer(load(p).tokenizer_dir(tmp_path / pre)).encode("a zqxjv")
    assert found["llama-bpe"][-1] == len(tokens) - 1
    assert len(found["default"]) > len(found["llama-bpe"])


def test_gguf_sentencepiece_without_scores_refused_at_load(tiny, tmp_path):
    """A vocabulary that cannot be rebuilt is refused when the file is opened, before any work."""
    _, _, d = tiny
    src = make_gguf_model(d, tmp_path / "m.gguf", "F32")
    with pytest.raises(ModelFileError, match=r"tokenizer metadata .*tokenizer\.ggml\.scores"):
        load(_rewrite_gguf(src, tmp_path / "sp.gguf", tokenizer__ggml__model="llama"))


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    p = smollm2_gguf_path()
    out = load(p).tokenizer_dir(tmp_path_factory.mktemp("smollm2"))
    return Tokenizer(out), _hf_tokenizer(p.parent, gguf_file=p.name), out


def test_smollm2_tokenizer_matches_transformers(smollm2):
    mine, ref, out = smollm2
    assert mine.vocab_size == 49152
    # eos: the file's <|im_end|>, then the end-of-turn control tokens llama.cpp stops on too
    assert (mine.bos_token_id, mine.eos_token_ids) == (1, [2, 0])
    assert (mine.id_to_token(1), mine.id_to_token(2), mine.id_to_token(0)) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    _assert_same_tokenization(mine, ref)
    # individual digits (the "smollm" pre-tokenizer), control tokens kept whole
    assert mine.encode("12345", add_special_tokens=False) == [mine.token_to_id(c) for c in "12345"]
    assert mine.encode("<|im_start|>", add_special_tokens=False) == [1]
    # transformers can open the written directory, and agrees
    _assert_same_tokenization(mine, _hf_tokenizer(out))


def test_smollm2_streams_through_the_byte_table(smollm2):
    """SmolLM2's byte-level tokenizer takes the fast detokenizer, which decodes random ids (all
    special tokens included) exactly as transformers does."""
    import random

    from tvmlm.detokenizer import ByteLevelDetokenizer

    mine, ref, _ = smollm2
    rng = random.Random(3)
    for _ in range(300):
        ids = [rng.randrange(20) if rng.random() < 0.2 else rng.randrange(mine.vocab_size) for _ in range(rng.randint(1, 16))]
        detok = mine.detokenizer()
        assert isinstance(detok, ByteLevelDetokenizer)
        text = "".join(detok.add([i]) for i in ids) + detok.flush()
        assert text == ref.decode(ids, skip_special_tokens=False), ids


def test_smollm2_chat_template_matches_transformers(smollm2):
    mine, ref, _ = smollm2
    _assert_same_chat(mine, ref)
    prompt = mine.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------
# The jinja environment itself, against transformers' renderer


ENV_TEMPLATES = {
    "tojson": "{{ messages | tojson }}|{{ tools | tojson(indent=2) }}"
    "|{{ {'b': 1, 'a': '<&>'} | tojson(sort_keys=True) }}",
    "namespace": "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
    "{% endfor %}{{ ns.n }}",
    "loopcontrols": "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
    "{% if m.role == 'system' %}{% continue %}{% endif %}[{{ m.role }}]{% endfor %}",
    "dict": "{% set d = dict(a=1, b=2) %}{{ d | tojson }}{{ dict.fromkeys(['x', 'y'], 0) | tojson }}",
    "strftime": "{{ strftime_now('%Y') }}",
    "generation": "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
    "whitespace": "  {% for m in messages %}\n    {% if m.role %}\n{{ m.role }}\n    {% endif %}\n{% endfor %}"
    "\n  {%- if add_generation_prompt %} gen {% endif %}",
    "none_dropped": "{% for m in messages %}{{ 'tool_calls' in m }}{{ m.content }}{% endfor %}",
    "reasoning": "{% for m in messages %}{{ m.reasoning_content }}/{{ m.thinking }};{% endfor %}",
    "vars": "{{ bos_token }}|{{ enable_thinking }}|{{ custom | default('unset') }}",
}


@pytest.mark.parametrize("name", list(ENV_TEMPLATES))
def test_environment_matches_transformers(name):
    from transformers.utils.chat_template_utils import render_jinja_template

    conv = CONVERSATIONS[1] + [
        {"role": "assistant", "content": "<b>&'\"ü</b>", "tool_calls": None, "reasoning": "because"}
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"city": "Zürich"}}}]
    kwargs = dict(bos_token="<s>", enable_thinking=False)
    ref, _ = render_jinja_template(
        conversations=[[{k: v for k, v in m.items() if v is not None} for m in conv]],
        tools=tools,
        chat_template=ENV_TEMPLATES[name],
        add_generation_prompt=True,
        **kwargs,
    )
    mine = render_chat_template(ENV_TEMPLATES[name], conv, tools=tools, add_generation_prompt=True, **kwargs)
    assert mine == ref[0]


def test_sandbox_blocks_escapes():
    msgs = [{"role": "user", "content": "x"}]
    for tpl in (
        "{{ messages.__class__.__mro__ }}",  # attribute walk to interpreter internals
        "{% set ns = namespace(_x=1) %}",  # underscore namespace attribute
        "{{ messages.append(1) }}",  # immutable sandbox: no mutation of inputs
    ):
        with pytest.raises(jinja2.exceptions.SecurityError):
            render_chat_template(tpl, msgs)
    with pytest.raises(ValueError, match="empty conversation"):
        render_chat_template("{{ messages }}", [])


def test_gguf_smollm_pre_tokenizer_isolates_digits(tiny, tmp_path):
    # The tiny vocab has digit merges (e.g. "2024" is not 4 tokens with GPT-2's split); the
    # "smollm" pre-tokenizer must still give one token per digit, as SmolLM2's tokenizer does.
    _, _, d = tiny
    make_gguf_model(d, tmp_path / "default.gguf", "F32", pre="default")
    make_gguf_model(d, tmp_path / "smollm.gguf", "F32", pre="smollm")
    default = Tokenizer(load(tmp_path / "default.gguf").tokenizer_dir(tmp_path / "a"))
    smollm = Tokenizer(load(tmp_path / "smollm.gguf").tokenizer_dir(tmp_path / "b"))
    text = "In 2024 there were 366 days"
    assert len(default.encode("2024")) < 4
    digits = smollm.encode(text)
    digit_tokens = [smollm.id_to_token(i) for i in digits if smollm.id_to_token(i).strip("Ġ").isdigit()]
    assert digit_tokens == list("2024366")
    assert smollm.decode(digits) == text
