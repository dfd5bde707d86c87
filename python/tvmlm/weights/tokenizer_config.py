"""tokenizer_config.json as tvmlm reads it, whichever transformers version saved it: the chat
template (from the config, a list of named templates, or chat_template.jinja) and the special
tokens as plain strings (older saves keep them in special_tokens_map.json, some as serialized
AddedToken dicts). Packages store this normalized form (weights/hf.py); `Tokenizer` reads it
from a package or an HF directory alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .check_json import read_json_file

__all__ = ["SPECIAL_KEYS", "normalized_tokenizer_config", "token_content"]

#: The special tokens chat templates read as variables (`{{ bos_token }}`), as transformers passes them.
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def normalized_tokenizer_config(src: Path) -> dict[str, Any]:
    """`src`'s tokenizer_config.json with `chat_template` (str or None), the SPECIAL_KEYS present
    in it as plain strings (bos/eos/unk/pad always present, None when unset) and `add_bos_token`
    a bool. Unreadable JSON raises ModelFileError naming the file."""
    path = src / "tokenizer_config.json"
    cfg: dict[str, Any] = dict(read_json_file(path)) if path.is_file() else {}
    stm = src / "special_tokens_map.json"
    if stm.is_file():
        for k, v in read_json_file(stm).items():
            cfg.setdefault(k, v)
    # transformers >= 4.43 saves the template to chat_template.jinja instead of the config.
    jinja = src / "chat_template.jinja"
    if not cfg.get("chat_template") and jinja.is_file():
        cfg["chat_template"] = jinja.read_text()
    cfg["chat_template"] = _pick_template(cfg.get("chat_template"))
    for key in SPECIAL_KEYS:
        if key in cfg or key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            cfg[key] = token_content(cfg.get(key))
    cfg["add_bos_token"] = bool(cfg.get("add_bos_token", False))
    return cfg


def _pick_template(tpl: Any) -> str | None:
    # Some configs hold a list of named templates; "default" is the chat one.
    if isinstance(tpl, list):
        named = {t["name"]: t["template"] for t in tpl}
        return named.get("default") or next(iter(named.values()), None)
    return tpl


def token_content(tok: Any) -> str | None:
    """A special token as written in configs: a string or a serialized AddedToken dict."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok
