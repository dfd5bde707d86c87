"""Sampling parameters, logprobs, text and request ids through the whole stack (protocol -> C++
sampler -> detokenizer), on the tiny float llama."""

from __future__ import annotations

import json
import threading
from collections import Counter

import numpy as np
import pytest

from tvmlm import Engine, EngineConfig, ModelNotFoundError, RequestError, TvmlmError

pytestmark = pytest.mark.engine

CHAT = [{"role": "user", "content": "tell me about the lighthouse"}]
SAMPLED = dict(temperature=1.0, top_p=0.9, top_k=50, min_p=0.02, presence_penalty=0.4,
               frequency_penalty=0.3, repetition_penalty=1.2, logit_bias={"40": 2.0}, seed=17)


def _text(engine, **kw):
    return engine.completions.create(prompt="the keeper", max_tokens=24, ignore_eos=True, **kw).choices[0].text


def _hf_logprobs(model_dir, ids: list[int]) -> np.ndarray:
    """log_softmax of transformers' float32 logits at every position of `ids`."""
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].log_softmax(-1).double().numpy()


def test_logprobs_match_transformers(tiny_engine, tiny_model_dir):
    """Completions with echo + logprobs (prompt and output) and chat logprobs, against
    log_softmax of transformers' float32 logits for the same tokens."""
    from test_engine import _hf_greedy

    prompt = tiny_engine.tokenizer.encode("The old lighthouse keeper climbed")
    r = tiny_engine.completions.create(prompt=prompt, max_tokens=8, ignore_eos=True, logprobs=5,
                                       echo=True, temperature=0.0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(prompt) + 8 and lp.token_logprobs[0] is None
    assert lp.top_logprobs[0] is None and r.choices[0].text.startswith(tiny_engine.tokenizer.decode(prompt))
    ids = prompt + _hf_greedy(tiny_model_dir("llama"), prompt, 8)  # greedy: the same tokens as ours
    assert r.choices[0].text == tiny_engine.tokenizer.decode(ids)
    ref = _hf_logprobs(tiny_model_dir("llama"), ids)
    ours = np.array(lp.token_logprobs[1:], dtype=np.float64)
    theirs = np.array([ref[i - 1, ids[i]] for i in range(1, len(ids))])
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    for pos, top in enumerate(lp.top_logprobs[1:], start=1):
        best = np.argsort(-ref[pos - 1])[:5]
        assert lp.tokens[pos] in top and len(top) <= 6  # the chosen token too: up to logprobs + 1
        texts = [tiny_engine.tokenizer.token_bytes(int(t)).decode("utf-8", errors="replace") for t in best]
        for t, text in zip(best, texts):
            if texts.count(text) == 1 and "\ufffd" not in text:  # partial characters share a key
                assert abs(top[text] - ref[pos - 1, t]) < 1e-3

    c = tiny_engine.chat.completions.create(messages=CHAT, max_tokens=6, ignore_eos=True, logprobs=True,
                                            top_logprobs=3, temperature=1.0, seed=5)
    content = c.choices[0].logprobs.content
    chat_ids = tiny_engine.tokenizer.encode(tiny_engine.tokenizer.apply_chat_template(CHAT), add_special_tokens=False)
    gen = [_id_of(tiny_engine, e.bytes) for e in content]
    ref = _hf_logprobs(tiny_model_dir("llama"), chat_ids + gen)
    for i, e in enumerate(content):
        row = ref[len(chat_ids) - 1 + i]
        assert abs(e.logprob - row[gen[i]]) < 1e-3
        assert [_id_of(tiny_engine, t.bytes) for t in e.top_logprobs] == list(np.argsort(-row)[:3])
        assert all(abs(t.logprob - row[_id_of(tiny_engine, t.bytes)]) < 1e-3 for t in e.top_logprobs)


def _id_of(engine, raw: list[int]) -> int:
    table = getattr(engine, "_test_bytes_to_id", None)
    if table is None:
        table = engine._test_bytes_to_id = {}
        for i in range(int(engine.metadata["vocab_size"])):
            table.setdefault(bytes(engine.tokenizer.token_bytes(i)), i)
    return table[bytes(raw)]


def test_greedy_logprobs_and_top_k_1_equal_greedy(tiny_engine):
    greedy = _text(tiny_engine, temperature=0.0)
    assert _text(tiny_engine, temperature=1.5, top_k=1, seed=4) == greedy
    r = tiny_engine.completions.create(prompt="the keeper", max_tokens=5, ignore_eos=True, temperature=0.0,
                                       logprobs=2)
    for token, top in zip(r.choices[0].logprobs.tokens, r.choices[0].logprobs.top_logprobs):
        assert max(top, key=top.get) == token  # greedy picks the most likely
    # logprobs=0 (OpenAI): each chosen token's logprob, no alternatives beyond it.
    r0 = tiny_engine.completions.create(prompt="the keeper", max_tokens=5, ignore_eos=True, temperature=0.0,
                                        logprobs=0)
    assert all(list(top) == [tok] for tok, top in zip(r0.choices[0].logprobs.tokens, r0.choices[0].logprobs.top_logprobs))
    assert r0.choices[0].logprobs.token_logprobs == r.choices[0].logprobs.token_logprobs


def test_logit_bias_forces_and_bans_through_the_engine(tiny_engine):
    forced = tiny_engine.completions.create(prompt="the keeper", max_tokens=6, ignore_eos=True, temperature=1.0,
                                            seed=1, logit_bias={"300": 100})
    assert forced.choices[0].text == tiny_engine.tokenizer.decode([300] * 6)
    kw = dict(messages=CHAT, max_tokens=1, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=2)
    greedy = tiny_engine.chat.completions.create(**kw).choices[0].logprobs.content[0]
    first = _id_of(tiny_engine, greedy.bytes)
    banned = tiny_engine.chat.completions.create(**kw, logit_bias={first: -100}).choices[0].logprobs.content[0]
    assert _id_of(tiny_engine, banned.bytes) != first
    assert banned.bytes == greedy.top_logprobs[1].bytes  # the runner-up


def test_penalties_lower_repeats(tiny_engine):
    def repeats(**kw):
        r = tiny_engine.completions.create(prompt="the keeper", max_tokens=48, ignore_eos=True, temperature=0.0,
                                           logprobs=0, **kw)
        tokens = r.choices[0].logprobs.tokens
        return len(tokens) - len(set(tokens))

    base = repeats()
    assert base > 5  # a random tiny model repeats itself greedily
    assert repeats(frequency_penalty=2.0) < base
    assert repeats(presence_penalty=2.0) < base
    assert repeats(repetition_penalty=3.0) < base


def test_streamed_equals_non_streamed(tiny_engine):
    for api, kw in (("chat", dict(messages=CHAT, logprobs=True, top_logprobs=2)),
                    ("completions", dict(prompt="the keeper", logprobs=2, echo=True))):
        create = (tiny_engine.chat.completions if api == "chat" else tiny_engine.completions).create
        whole = create(max_tokens=20, ignore_eos=True, n=2, **SAMPLED, **kw)
        chunks = list(create(max_tokens=20, ignore_eos=True, n=2, stream=True, **SAMPLED, **kw))
        for i, choice in enumerate(whole.choices):
            mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
            if api == "chat":
                assert "".join(c.delta.content or "" for c in mine) == choice.message.content
                streamed = [e for c in mine if c.logprobs for e in c.logprobs.content]
                assert [e.bytes for e in streamed] == [e.bytes for e in choice.logprobs.content]
                # (the second run forks the first one's cached prompt: float noise, not a change)
                np.testing.assert_allclose([e.logprob for e in streamed],
                                           [e.logprob for e in choice.logprobs.content], atol=1e-5)
            else:
                assert "".join(c.text for c in mine) == choice.text
                got = [t for c in mine if c.logprobs for t in c.logprobs.token_logprobs]
                assert got[0] is None and choice.logprobs.token_logprobs[0] is None
                np.testing.assert_allclose(got[1:], choice.logprobs.token_logprobs[1:], atol=1e-5)
                assert [o for c in mine if c.logprobs for o in c.logprobs.text_offset] == choice.logprobs.text_offset


@pytest.mark.engine  # builds an engine on the tiny model (compiles on a cold cache)
def test_seeded_request_is_the_same_alone_and_in_a_batch_of_16(tiny_model_dir):
    with Engine(tiny_model_dir("llama"), device="cpu", engine_config=EngineConfig(max_num_sequence=16)) as engine:
        alone = _text(engine, **SAMPLED)
        results: dict[int, str] = {}
        start = threading.Barrier(16)

        def run(i):
            start.wait()
            kw = SAMPLED if i == 7 else {**SAMPLED, "seed": 100 + i, "temperature": 0.8}
            prompt = "the keeper" if i == 7 else f"prompt number {i} is longer"
            results[i] = engine.completions.create(prompt=prompt, max_tokens=24, ignore_eos=True, **kw).choices[0].text

        threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results[7] == alone
        assert json.loads(engine._core.metrics())["decode_tokens"] > 0
        assert len(set(results.values())) > 8  # the others really sampled


def test_special_tokens_stay_out_of_text_unless_asked(tiny_engine):
    kw = dict(prompt="the keeper", max_tokens=3, ignore_eos=True, temperature=1.0, seed=2, logit_bias={"1": 100})
    assert tiny_engine.completions.create(**kw).choices[0].text == ""
    assert tiny_engine.completions.create(**kw, skip_special_tokens=False).choices[0].text == "<|im_start|>" * 3


def test_completion_batch_of_prompts(tiny_engine):
    prompts = ["the keeper", "a computer program", "in the village"]
    batch = tiny_engine.completions.create(prompt=prompts, max_tokens=10, ignore_eos=True, temperature=0.0, n=2)
    assert [c.index for c in batch.choices] == list(range(6))
    for i, p in enumerate(prompts):
        one = tiny_engine.completions.create(prompt=p, max_tokens=10, ignore_eos=True, temperature=0.0).choices[0].text
        assert batch.choices[2 * i].text == batch.choices[2 * i + 1].text == one
    streamed = list(tiny_engine.completions.create(prompt=prompts, max_tokens=10, ignore_eos=True,
                                                   temperature=0.0, n=2, stream=True))
    for choice in batch.choices:
        assert "".join(c.choices[0].text for c in streamed if c.choices[0].index == choice.index) == choice.text
    ids = tiny_engine.completions.create(prompt=[[5, 6, 7], [8, 9]], max_tokens=2, ignore_eos=True)
    assert len(ids.choices) == 2 and ids.usage.prompt_tokens == 5


def test_echo_without_logprobs(tiny_engine):
    kw = dict(prompt="the keeper", max_tokens=4, ignore_eos=True, temperature=0.0)
    r = tiny_engine.completions.create(echo=True, **kw)
    assert r.choices[0].text == "the keeper" + tiny_engine.completions.create(**kw).choices[0].text
    assert r.choices[0].logprobs is None


def test_response_id_is_what_abort_takes(tiny_engine):
    stream = tiny_engine.chat.completions.create(messages=CHAT, max_tokens=3000, ignore_eos=True, stream=True,
                                                 temperature=0.0)
    first = next(stream)
    tiny_engine.abort(first.id)
    finishes = [c.choices[0].finish_reason for c in stream if c.choices]
    assert finishes[-1] == "abort"
    whole = tiny_engine.chat.completions.create(messages=CHAT, max_tokens=2)
    assert whole.id.startswith("chatcmpl-")
    batch = tiny_engine.completions.create(prompt=["a", "b"], max_tokens=3000, ignore_eos=True, stream=True,
                                           temperature=0.0)
    first = next(batch)
    tiny_engine.abort(first.id)  # one id stops every prompt of the batch
    rest = Counter(c.choices[0].finish_reason for c in batch if c.choices[0].finish_reason)
    assert rest == {"abort": 2} or (first.choices[0].finish_reason == "abort" and rest == {"abort": 1})


@pytest.mark.parametrize("kw, match", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(logit_bias={"999999": 5}), "outside the vocabulary"),
    (dict(stop_token_ids=[10**6]), "outside the vocabulary"),
    (dict(prompt=["fine", "x" * 5000]), "context window"),
    (dict(logprobs=9), "logprobs"),
])
def test_request_errors_come_before_anything_is_queued(tiny_engine, kw, match):
    before = tiny_engine.metrics()["python_requests"]
    with pytest.raises(RequestError, match=match):
        tiny_engine.completions.create(**{"prompt": "the keeper", **kw})
    assert tiny_engine.metrics()["python_requests"] == before


def test_chat_template_failure_is_a_request_error(tiny_engine):
    with pytest.raises(RequestError, match="chat template"):
        tiny_engine.chat.completions.create(messages=[{"role": "tool", "content": "x", "tool_call_id": "c1"}])


def test_missing_model_files_are_file_not_found(tmp_path, tiny_package):
    with pytest.raises(FileNotFoundError) as info:
        Engine(tmp_path / "nope", device="cpu")
    assert isinstance(info.value, TvmlmError) and isinstance(info.value, ModelNotFoundError)
    from tvmlm.tokenizer import Tokenizer

    with pytest.raises(FileNotFoundError) as info:
        Tokenizer(tmp_path)
    assert isinstance(info.value, TvmlmError)


def test_unusable_device_is_a_runtime_error(tiny_model_dir):
    from tvmlm import DeviceError, _core

    if _core.device_exists("cuda", 7):
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(RuntimeError) as info:
        Engine(tiny_model_dir("llama"), device="cuda:7")
    assert isinstance(info.value, DeviceError)
