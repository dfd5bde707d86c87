"""JSON model files and tokenizer.json, read with errors that name the file (no tvmlm imports
beyond the errors: the tokenizer and the model checks both use these)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelFileError

__all__ = ["load_tokenizer_json", "read_json_file"]


def read_json_file(path: str | Path, expect: type = dict) -> Any:
    """The JSON value in `path` (an object unless `expect` says otherwise); ModelFileError naming
    the file when it is unreadable, not JSON, or of another type."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(path, "content", f"is not valid JSON: {exc}") from None
    if not isinstance(value, expect):
        names = {dict: "object", list: "array", str: "string"}
        raise ModelFileError(
            path, "content", f"is a JSON {names.get(type(value), type(value).__name__)}, expected a JSON {names.get(expect, expect.__name__)}"
        )
    return value


def load_tokenizer_json(path: str | Path) -> Any:
    """tokenizer.json as a `tokenizers.Tokenizer`; ModelFileError naming the file when it does not load."""
    import tokenizers

    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception for every problem
        raise ModelFileError(path, "content", f"is not a tokenizers file (tokenizer.json): {exc}") from None
