"""A quality gate: perplexity and KL divergence of next-token distributions against float32.

    python -m tvmlm.eval model1.gguf model2.gguf --tokens 2048 --ctx 512 [--json out.json]
    tvmlm eval model.gguf ...

For each model file, transformers in float32 on the same weights (a GGUF dequantized) is the
reference. tvmlm (the package `Engine` builds for the file, optional build variants) and, when
`llama_cpp` is importable, llama.cpp on the same file are given the same token ids (the reference
tokenizer's) in non-overlapping windows; every position after a window's first is scored:
perplexity, mean KL(reference || engine) in nats, and how often the top-1 tokens agree.
Needs `pip install torch transformers accelerate` (and `llama-cpp-python` for the comparison).
"""

from .metrics import Scores, log_softmax
from .run import evaluate_file

__all__ = ["Scores", "evaluate_file", "log_softmax"]
