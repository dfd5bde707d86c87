"""Tiny random-weight Hugging Face models of every supported architecture, with a real byte-level
BPE tokenizer and a ChatML template. Seeded: repeated builds give identical files."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 (as in SmolLM2)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

# ChatML with a default system prompt. Block tags sit on their own lines so that the output depends
# on trim_blocks/lstrip_blocks, and unknown roles go through raise_exception: both must behave as
# in transformers.
CHATML_TEMPLATE = """{% if messages[0]['role'] == 'system' %}
    {% set system_message = messages[0]['content'] %}
    {% set loop_messages = messages[1:] %}
{% else %}
    {% set system_message = 'You are a tiny test model.' %}
    {% set loop_messages = messages %}
{% endif %}
<|im_start|>system
{{ system_message }}<|im_end|>
{% for message in loop_messages %}
    {% if message['role'] not in ['user', 'assistant'] %}
        {{ raise_exception('Conversation roles must be user or assistant, got ' + message['role']) }}
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | trim }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

# Training text for the tiny BPE (original prose; any English works).
TRAIN_TEXT = """
The old lighthouse keeper climbed the spiral stairs every evening before the sun went down. He
counted the steps out loud, one hundred and twelve of them, and at the top he wiped the salt from
the great glass lens with a soft cloth. Ships passing in the night never knew his name, but they
trusted his light to show them where the rocks were hidden beneath the waves.
In the village below, children played by the harbour while fishermen mended their nets. The baker
opened his shop early, and the smell of fresh bread drifted along the narrow streets. Somebody was
always talking about the weather: whether the wind would turn, whether the storm would reach the
coast, whether the boats should stay at home tomorrow.
A computer program is a list of instructions that a machine follows one after another. Good
programs are written for people first and for machines second, because people have to read,
change and test them for many years. Functions take inputs and return outputs; loops repeat work;
conditions choose between different paths. When something goes wrong, a clear error message
saves hours of searching.
What is the capital of France? The capital of France is Paris. What is the largest planet in the
solar system? Jupiter is the largest planet, followed by Saturn, Uranus and Neptune. Water boils at
one hundred degrees Celsius at sea level, and it freezes at zero degrees. In 2024 there were 366
days, in 2025 there were 365 days, and in 2026 there will be 365 again. Call 555 0199 or 1234567890.
Hello! How are you today? I am fine, thank you. Could you please help me write a short poem about
the sea, the sky and the quiet evening light? Of course, here is a small poem for you.
"""

_ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3")


@lru_cache(maxsize=8)
def tiny_tokenizer_json(vocab_size: int) -> str:
    """tokenizer.json text of a byte-level BPE with exactly `vocab_size` tokens (specials 0..2)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_TEXT.split("\n"), trainer=trainer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is below the byte alphabet + specials ({size})")
    # The text may not yield enough merges for a large vocab: pad with plain added tokens.
    tok.add_tokens([AddedToken(f"<|extra_{i}|>", special=False) for i in range(vocab_size - size)])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    return tok.to_str()


def make_hf_model(
    arch: str,
    out_dir: str | Path,
    *,
    vocab_size: int = 611,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    head_dim: int | None = None,
    tie: bool = False,
    seed: int = 0,
    init_std: float = 0.1,
    dtype: str = "float32",
    max_shard_size: str | int | None = None,
    max_position_embeddings: int = 512,
    rope_theta: float = 10000.0,
    chat_template: str = CHATML_TEMPLATE,
    config_overrides: dict | None = None,
) -> Path:
    """Save a tiny random model of `arch` (llama, qwen2, qwen3, mistral, gemma3, phi3) and its
    tokenizer in `out_dir` (safetensors, `dtype` float32/bfloat16/float16, sharded when
    `max_shard_size` is set). `config_overrides` go to the transformers config class as they are
    (rope_parameters, sliding_window, layer_types, ...).

    mistral and qwen3 get an explicit head_dim of 2 * hidden / heads (unless given) so that code
    assuming head_dim == hidden / heads fails. Norm weights and biases are randomized too (HF inits
    them to 1/0, which would hide loader mistakes), and the init std is large enough that greedy
    decoding is not degenerate.
    """
    import torch
    import transformers as tf

    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {_ARCHS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if head_dim is None and arch in ("mistral", "qwen3", "gemma3"):
        head_dim = 2 * hidden_size // heads
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=init_std,
        tie_word_embeddings=tie,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    if head_dim is not None:
        common["head_dim"] = head_dim
    cls = {
        "llama": tf.LlamaConfig,
        "qwen2": tf.Qwen2Config,
        "qwen3": tf.Qwen3Config,
        "mistral": tf.MistralConfig,
        "gemma3": tf.Gemma3TextConfig,
        "phi3": tf.Phi3Config,
    }[arch]
    overrides = dict(config_overrides or {})
    if arch == "mistral":
        overrides.setdefault("sliding_window", None)  # transformers' default (4096) is past the context
    config = cls(**common, **overrides)
    rope = getattr(config, "rope_parameters", None)
    if "rope_parameters" not in overrides and isinstance(rope, dict) and "full_attention" not in rope:
        config.rope_theta = rope_theta
        rope["rope_theta"] = rope_theta

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(init_std * torch.randn_like(p))
    model.to(getattr(torch, dtype)).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)

    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer_object(vocab_size),
        bos_token=SPECIAL_TOKENS[BOS_ID],
        eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
        unk_token=None,
        chat_template=chat_template,
        add_bos_token=False,
    )
    fast.save_pretrained(out)
    return out


def _tokenizer_object(vocab_size: int):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tiny_tokenizer_json(vocab_size))
