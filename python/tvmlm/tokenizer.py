"""Tokenizer: a `tokenizers.Tokenizer` (tokenizer.json) plus the chat template and stop tokens from
the files beside it (tokenizer_config.json, generation_config.json, config.json, metadata.json)."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Sequence

import tokenizers

from .chat_template import render_chat_template
from .detokenizer import ByteLevelDetokenizer, IncrementalDetokenizer, TokenBytes
from .errors import ModelNotFoundError
from .weights.check_json import load_tokenizer_json, read_json_file
from .weights.tokenizer_config import SPECIAL_KEYS, normalized_tokenizer_config

__all__ = ["Tokenizer"]

def _read_json(path: Path) -> dict[str, Any]:
    return read_json_file(path) if path.is_file() else {}  # ModelFileError naming the file


def _as_list(v: Any) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]


def _return_freed_heap() -> None:
    """Give the heap that parsing tokenizer.json freed back to the OS: glibc keeps it mapped
    otherwise (Gemma 3's 262k-piece vocabulary: 200 MB of RSS held for the process's life)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Tokenizer:
    def __init__(self, tokenizer_dir: str | Path):
        d = Path(tokenizer_dir)
        tok_file = d / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelNotFoundError(f"no tokenizer.json in {str(d)!r}")
        self._tok = load_tokenizer_json(tok_file)  # ModelFileError naming the file
        _return_freed_heap()
        cfg = normalized_tokenizer_config(d)
        gen = _read_json(d / "generation_config.json")
        model_cfg = _read_json(d / "config.json")
        pkg_meta = _read_json(d / "metadata.json")  # compiled package (docs/contracts.md section 1)

        self.chat_template: str | None = cfg["chat_template"]

        # Passed to the template as variables, as transformers does (e.g. `{{ bos_token }}`).
        self.special_tokens: dict[str, str] = {
            k: v for k in SPECIAL_KEYS if (v := cfg.get(k)) is not None
        }

        bos = self.special_tokens.get("bos_token")
        bos_id = self._tok.token_to_id(bos) if bos else None
        for src in (gen, model_cfg, pkg_meta):
            if bos_id is None and src.get("bos_token_id") is not None:
                bos_id = int(src["bos_token_id"])
        self.bos_token_id: int | None = bos_id

        eos = self.special_tokens.get("eos_token")
        eos_ids = [self._tok.token_to_id(eos)] if eos and self._tok.token_to_id(eos) is not None else []
        # Models such as Llama-3-Instruct stop on several tokens listed only in generation_config.
        for ids in (gen.get("eos_token_id"), model_cfg.get("eos_token_id"), pkg_meta.get("eos_token_ids")):
            eos_ids += _as_list(ids)
        self.eos_token_ids: list[int] = list(dict.fromkeys(eos_ids))
        # Byte-level BPE streams through a per-token byte table (detokenizer.py), shared by requests.
        byte_level = isinstance(self._tok.decoder, tokenizers.decoders.ByteLevel)
        self._token_bytes = TokenBytes(self._tok.id_to_token) if byte_level else None
        self._special_ids: frozenset[int] | None = None

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the added tokens marked special (`<|im_start|>`, `</s>`, ...): what
        skip_special_tokens keeps out of text."""
        if self._special_ids is None:
            decoder = self._tok.get_added_tokens_decoder()
            self._special_ids = frozenset(i for i, t in decoder.items() if t.special)
        return self._special_ids

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes token `token_id` stands for on its own (byte-level BPE tokens may hold
        part of a character)."""
        if self._token_bytes is not None:
            return self._token_bytes[token_id]
        return self._tok.decode([token_id], skip_special_tokens=False).encode()

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer` (for libraries that read the vocabulary)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. `add_special_tokens` applies the tokenizer's post-processor (e.g. a
        BOS for Llama); pass False for text rendered by a chat template, which has them already."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def detokenizer(self, prompt_ids: Sequence[int] = ()) -> IncrementalDetokenizer | ByteLevelDetokenizer:
        """A streaming decoder for tokens generated after `prompt_ids` (text deltas that
        concatenate to `decode` of the generated ids)."""
        if self._token_bytes is not None:
            return ByteLevelDetokenizer(self._token_bytes)
        return IncrementalDetokenizer(self.decode, prompt_ids)

    def apply_chat_template(
        self,
        messages: Sequence[Any],
        add_generation_prompt: bool = True,
        *,
        tools: list[dict] | None = None,
        **template_vars: Any,
    ) -> str:
        if not self.chat_template:
            raise ValueError(
                "this tokenizer has no chat template (tokenizer_config.json has no chat_template)"
            )
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **{**self.special_tokens, **template_vars},
        )
