"""The core's TokenConstraint hook without xgrammar: hand-made GrammarMasks and a worker thread
that allows one token at a time show where masks apply, that the worker runs one token ahead,
and how terminated, failed and mismatched masks end a request."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tvmlm import _core

PROMPT = [1, 5, 9, 13, 17, 21]


def allow_only(mask, token: int) -> None:
    words = mask.words
    words[:] = 0
    words[token // 32] = np.int32(np.uint32(1 << (token % 32)).view(np.int32))


class Forcer:
    """Worker: after token t, allow only `step(t)`; `end_after` tokens then terminate (or fail)."""

    def __init__(self, step, end_after: int | None = None, fail: bool = False):
        self.queue = _core.MaskWorkQueue()
        self.step, self.end_after, self.fail = step, end_after, fail
        self.accepted: dict[int, list[int]] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def mask(self, vocab: int, first: int):
        m = _core.GrammarMask(vocab, self.queue)
        allow_only(m, first)
        m.set_ready()
        return m

    def _run(self):
        while True:
            work = self.queue.take()
            if not work and self.queue.closed:
                return
            for mask, mask_id, token in work:
                if mask is None:
                    continue
                seen = self.accepted.setdefault(mask_id, [])
                seen.append(token)
                if self.end_after is not None and len(seen) >= self.end_after:
                    mask.set_error("grammar broke") if self.fail else mask.set_terminated()
                else:
                    allow_only(mask, self.step(token))
                    mask.set_ready()
            del work, mask

    def close(self):
        self.queue.close()
        self.thread.join()


def generate(engine, masks, n=1, max_tokens=12, temperature=1.0):
    gen = {"max_tokens": max_tokens, "temperature": temperature, "top_p": 1.0, "top_k": 0, "seed": 3,
           "stop_token_ids": [], "ignore_eos": True, "n": n}
    _, inbox = engine.generator.submit(list(PROMPT), gen, stream=True, token_masks=masks)
    tokens, finish, errors = {}, {}, {}
    while len(finish) < n:
        for d in inbox.take():
            tokens.setdefault(d.index, []).extend(d.token_ids)
            if d.finish_reason is not None:
                finish[d.index], errors[d.index] = d.finish_reason, d.error
    return tokens, finish, errors


@pytest.fixture
def vocab(tiny_engine):
    return int(tiny_engine.metadata["vocab_size"])


def test_masks_force_every_sampled_token_per_choice(tiny_engine, vocab):
    forcer = Forcer(step=lambda t: (t * 7 + 3) % vocab)
    try:
        masks = [forcer.mask(vocab, 40), forcer.mask(vocab, 600)]
        tokens, finish, _ = generate(tiny_engine, masks, n=2)
        del masks
    finally:
        forcer.close()
    for i, first in enumerate((40, 600)):
        expected = [first]
        while len(expected) < 12:
            expected.append((expected[-1] * 7 + 3) % vocab)
        assert tokens[i] == expected and finish[i] == "length"
    # Each choice's worker saw every token but the last (no mask is needed after it).
    assert sorted(len(v) for v in forcer.accepted.values()) == [11, 11]


def test_terminated_mask_stops_and_failed_mask_errors(tiny_engine, vocab):
    for fail, reason in ((False, "stop"), (True, "error")):
        forcer = Forcer(step=lambda t: t + 1, end_after=3, fail=fail)
        try:
            tokens, finish, errors = generate(tiny_engine, [forcer.mask(vocab, 100)])
        finally:
            forcer.close()
        assert tokens[0] == [100, 101, 102] and finish[0] == reason
        assert ("grammar broke" in errors[0]) == fail


def test_a_mask_that_allows_nothing_stops(tiny_engine, vocab):
    forcer = Forcer(step=lambda t: t)
    try:
        m = _core.GrammarMask(vocab, forcer.queue)
        m.set_ready()  # all words zero
        tokens, finish, _ = generate(tiny_engine, [m])
    finally:
        forcer.close()
    assert tokens.get(0, []) == [] and finish[0] == "stop"


def test_mask_count_must_match_n(tiny_engine, vocab):
    forcer = Forcer(step=lambda t: t)
    try:
        _, finish, errors = generate(tiny_engine, [forcer.mask(vocab, 1)], n=2)
    finally:
        forcer.close()
    assert finish == {0: "error", 1: "error"} and "1 token constraints for n = 2" in errors[0]


def test_a_stopped_worker_fails_the_waiting_request(tiny_engine, vocab):
    queue = _core.MaskWorkQueue()
    m = _core.GrammarMask(vocab, queue)  # never made ready
    queue.close()
    _, finish, errors = generate(tiny_engine, [m])
    assert finish[0] == "error" and "grammar worker has stopped" in errors[0]
