"""Greedy decoding straight on a `_core.Model`: the reference that engine tests and the GPU check
compare the engine (and transformers) against."""

from __future__ import annotations

from typing import Any


def core_greedy(model: Any, seq_id: int, prompt: list[int], steps: int):
    """(logits [steps + 1, vocab], tokens): one prefill of `prompt` on sequence `seq_id` of a
    `_core.Model`, then `steps` decodes, each taking the argmax of the last logits."""
    import numpy as np

    logits = [model.prefill([seq_id], [prompt])[0]]
    tokens = [int(np.argmax(logits[-1]))]
    for _ in range(steps):
        logits.append(model.decode([seq_id], [tokens[-1]])[0])
        tokens.append(int(np.argmax(logits[-1])))
    return np.stack(logits), tokens
