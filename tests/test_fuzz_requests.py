"""Hypothesis: random request arguments against the live tiny engine.

Every outcome is a response (streams consumed to the end) or a `RequestError` raised by `create()`
before the request reaches the core: the core's error count never moves, no request is left
running, and the engine answers a plain request normally afterwards.
"""

from __future__ import annotations

import math
import time

from fuzz_settings import fuzz_settings
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from tvmlm.errors import RequestError

FUZZ = fuzz_settings(HealthCheck.function_scoped_fixture)

# Text with lone surrogates, NULs, control and non-BMP characters mixed in.
TEXT = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from("\0\n<|>")), max_size=24)
NUMBERS = st.one_of(
    st.integers(-3, 10),
    st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 2.0, math.nan, math.inf, -math.inf]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)

MESSAGE = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), JUNK),
     "content": st.one_of(TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2), JUNK)},
    optional={"name": st.one_of(TEXT, JUNK)},
)
# Valid-looking values most of the time, anything some of the time (field -> strategy).
FIELDS = {
    "model": st.one_of(TEXT, JUNK),
    "temperature": st.one_of(st.floats(0, 2), NUMBERS, JUNK),
    "top_p": st.one_of(st.floats(0.01, 1), NUMBERS, JUNK),
    "top_k": st.one_of(st.integers(0, 50), NUMBERS, JUNK),
    "seed": st.one_of(st.integers(0, 2**64 - 1), NUMBERS, JUNK),
    "n": st.one_of(st.integers(1, 3), NUMBERS, JUNK),
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=3), JUNK),
    "stream": st.one_of(st.booleans(), JUNK),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), JUNK),
    "ignore_eos": st.one_of(st.booleans(), JUNK),
    "frequency_penalty": st.one_of(st.just(0.0), NUMBERS, JUNK),
    "presence_penalty": st.one_of(st.just(0.0), NUMBERS, JUNK),
    "user": st.one_of(TEXT, JUNK),
    "logprobs": JUNK,
}
# max_tokens stays small when valid: the property is about validation, not long generations.
MAX_TOKENS = st.one_of(st.integers(1, 4), st.sampled_from([0, -1, 2**63, 2**64, 1.5, "3", True, math.nan]))
EXTRA = st.dictionaries(st.text(min_size=1, max_size=8), JUNK, max_size=1)

CHAT = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(MESSAGE, min_size=1, max_size=3), JUNK), "max_tokens": MAX_TOKENS},
    optional={**FIELDS, "max_completion_tokens": MAX_TOKENS},
)
COMPLETION = st.fixed_dictionaries(
    {"prompt": st.one_of(TEXT, st.lists(st.one_of(st.integers(0, 700), NUMBERS), max_size=6), JUNK), "max_tokens": MAX_TOKENS},
    optional={**FIELDS, "echo": st.one_of(st.booleans(), JUNK)},
)


def _call(engine, kind: str, request: dict) -> None:
    api = engine.chat.completions if kind == "chat" else engine.completions
    out = api.create(**request)
    if request.get("stream") is True:
        chunks = list(out)
        assert chunks
    else:
        assert out.choices and all(c.finish_reason in ("stop", "length") for c in out.choices)


@FUZZ
@given(kind=st.sampled_from(["chat", "completion"]), data=st.data())
def test_random_requests(tiny_engine, kind, data):
    request = data.draw(CHAT if kind == "chat" else COMPLETION)
    request.update({k: v for k, v in data.draw(EXTRA).items() if k not in request})
    errored = tiny_engine.metrics()["requests_errored"]
    try:
        _call(tiny_engine, kind, request)
    except RequestError as exc:
        assert "in the engine" not in str(exc), f"refused late, by the core: {exc}"
    assert tiny_engine.metrics()["requests_errored"] == errored, "a request reached the core and failed there"
    # Nothing left behind (a stop string's abort lands at the core's next step: allow a moment).
    deadline = time.monotonic() + 5
    while (m := tiny_engine.metrics())["running"] + m["waiting"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert m["running"] == 0 and m["waiting"] == 0


def test_engine_serves_normally_after_fuzzing(tiny_engine):
    first = tiny_engine.completions.create(prompt=[5, 6, 7], max_tokens=4, temperature=0.0)
    again = tiny_engine.completions.create(prompt=[5, 6, 7], max_tokens=4, temperature=0.0)
    assert first.usage.completion_tokens == 4 and first.choices[0].text == again.choices[0].text
