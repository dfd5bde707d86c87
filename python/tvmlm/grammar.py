"""Grammar-constrained generation with xgrammar: JSON output (`response_format`) and forced tool
calls. The C++ core applies each constrained choice's token bitmask before sampling it
(`_core.GrammarMask`, a `TokenConstraint`); this module owns the xgrammar side:

    submit:     compile the grammar (cached), one matcher per choice, fill the first mask
    step loop:  sample under mask k, hand the token to the MaskWorkQueue, go on with the step
    worker:     matcher.accept_token(token), fill mask k+1 (while the next forward runs), set_ready

So masks are computed one token ahead on this module's worker thread, and the step loop waits
only when a mask takes longer than a model step; requests without a grammar never wait.
xgrammar (and the torch it imports) is loaded on the first constrained request.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import RequestError

__all__ = ["GrammarSpec", "GrammarBackend", "chat_grammar", "prepare_json_schema"]

#: JSON-schema keywords whose meaning xgrammar enforces (or that only annotate). Schemas using any
#: other keyword are refused: output would parse but might not validate.
_SUPPORTED_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "enum",
    "const", "anyOf", "$ref", "$defs", "definitions", "minItems", "maxItems", "minLength",
    "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minProperties", "maxProperties", "format", "title", "description", "default", "examples",
    "$schema", "$id", "$comment", "nullable",
})
#: `format` values xgrammar turns into a grammar (others would be ignored, so they are refused).
_SUPPORTED_FORMATS = frozenset({
    "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri",
    "uri-reference", "uri-template", "json-pointer", "relative-json-pointer",
})
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
#: What a length-limited string may hold: printable ASCII but '"' and '\\', U+00A0-U+07FF,
#: U+1000-U+CFFF and U+E000-U+FFFF: ranges whose UTF-8 xgrammar matches exactly (checked by fuzzing
#: 40k random byte sequences); no escapes, no 4-byte characters.
_LENGTH_LIMITED_CHAR = r"[ !#-\[\]-~\u00a0-\u07ff\u1000-\ucfff\ue000-\uffff]"


def prepare_json_schema(schema: Any, where: str) -> Any:
    """`schema` as xgrammar gets it: refused when xgrammar cannot enforce it (the message names the
    first offending keyword and its path), string length limits rewritten (a copy is returned).

    xgrammar (0.2.x) turns minLength/maxLength into a character class that lets control characters
    through, which JSON forbids unescaped, and its UTF-8 automaton takes some overlong and surrogate
    byte sequences, which a decoder turns into several U+FFFD (so the decoded string is too long).
    Length-limited strings become a `pattern` of the same length over _LENGTH_LIMITED_CHAR.
    """
    schema = json.loads(json.dumps(schema))  # a private copy to rewrite

    def walk(node: Any, path: str) -> None:
        if isinstance(node, bool):
            return
        if not isinstance(node, dict):
            raise RequestError(f"{where}{path}: a JSON schema must be an object or a boolean, got {node!r}")
        if "minLength" in node or "maxLength" in node:
            _length_as_pattern(node, f"{where}{path}")
        for key, value in list(node.items()):
            if key not in _SUPPORTED_KEYWORDS:
                raise RequestError(
                    f"{where}{path}: the JSON-schema keyword {key!r} is not supported for "
                    f"structured output; supported: {', '.join(sorted(_SUPPORTED_KEYWORDS))}"
                )
            if key == "format" and value not in _SUPPORTED_FORMATS:
                raise RequestError(
                    f"{where}{path}.format: {value!r} is not supported; supported formats: "
                    f"{', '.join(sorted(_SUPPORTED_FORMATS))}"
                )
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                for name, sub in value.items():
                    walk(sub, f"{path}.{key}.{name}")
            elif key in ("items", "additionalProperties") and isinstance(value, (dict, bool)):
                walk(value, f"{path}.{key}")
            elif key in ("anyOf", "prefixItems") and isinstance(value, list):
                for i, sub in enumerate(value):
                    walk(sub, f"{path}.{key}[{i}]")
            elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
                raise RequestError(f"{where}{path}.$ref: only local references ('#/...') are supported, got {value!r}")

    walk(schema, "")
    return schema


def _length_as_pattern(node: dict, where: str) -> None:
    lo, hi = node.get("minLength", 0), node.get("maxLength")
    for name, value in (("minLength", lo), ("maxLength", hi)):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise RequestError(f"{where}.{name}: must be an integer >= 0, got {value!r}")
    if "pattern" in node or "format" in node:
        raise RequestError(f"{where}: minLength/maxLength together with pattern or format is not supported")
    node.pop("minLength", None)
    node.pop("maxLength", None)
    node["pattern"] = r"^%s{%d,%s}$" % (_LENGTH_LIMITED_CHAR, lo, "" if hi is None else hi)


@dataclass(frozen=True)
class GrammarSpec:
    """What to constrain a choice to. kind: "json_schema" (source: the schema as JSON text),
    "json_object" (any JSON object) or "structural_tag" (source: xgrammar structural tag JSON)."""

    kind: str
    source: str = ""


class _Matcher:
    """One choice's matcher; the worker advances it, nobody else touches it after submission."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher


class GrammarBackend:
    """Per engine: the tokenizer's xgrammar info, a compiled-grammar cache, and the worker thread
    that advances every constrained choice's matcher. `close()` joins the worker."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        try:
            import xgrammar as xgr
        except ImportError as exc:  # an optional extra: it pulls in torch and transformers
            raise RequestError(
                "response_format and required/named tool_choice need xgrammar, which is not installed: "
                "pip install 'tvmlm[structured]'") from exc

        from . import _core

        self._xgr = xgr
        self._info = _tokenizer_info(xgr, tokenizer, vocab_size, stop_token_ids)
        self._compiler = xgr.GrammarCompiler(self._info, max_threads=2)
        self._vocab_size = vocab_size
        self._queue = _core.MaskWorkQueue()
        self._matchers: dict[int, _Matcher] = {}
        self._thread = threading.Thread(target=self._run, name="tvmlm-grammar", daemon=True)
        self._thread.start()

    # ---- submission (caller's thread) -----------------------------------------------------------
    def compile(self, spec: GrammarSpec, where: str = "response_format") -> Any:
        """The compiled grammar for `spec` (xgrammar caches by source); RequestError if rejected."""
        try:
            if spec.kind == "json_schema":
                return self._compiler.compile_json_schema(spec.source, any_whitespace=False, strict_mode=True)
            if spec.kind == "json_object":
                return self._compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if spec.kind == "structural_tag":
                return self._compiler.compile_structural_tag(spec.source)
        except (RuntimeError, ValueError) as exc:  # xgrammar's compile errors
            raise RequestError(f"{where}: the grammar compiler refused it: {exc}") from None
        raise ValueError(f"unknown grammar kind {spec.kind!r}")

    def masks(self, compiled: Any, n: int) -> list[Any]:
        """`n` GrammarMasks (one per choice) at the grammar's start, their first masks filled."""
        from . import _core

        out = []
        for _ in range(n):
            mask = _core.GrammarMask(self._vocab_size, self._queue)
            matcher = _Matcher(self._xgr.GrammarMatcher(compiled))
            matcher.matcher.fill_next_token_bitmask(mask.words.reshape(1, -1))
            self._matchers[mask.id] = matcher
            mask.set_ready()
            out.append(mask)
        return out

    # ---- worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while self._work(self._queue.take()) or not self._queue.closed:
            pass

    def _work(self, work: list) -> bool:
        # A function of its own: no mask outlives its batch in a local while the worker waits (a
        # mask is released, and its matcher dropped, only when nothing holds it).
        for mask, mask_id, token in work:
            if token < 0:  # the request is gone
                self._matchers.pop(mask_id, None)
            else:
                self._advance(mask, self._matchers.get(mask_id), token)
        return bool(work)

    def _advance(self, mask: Any, m: _Matcher | None, token: int) -> None:
        try:
            if m is None:
                mask.set_error("no grammar matcher for this request")
            elif not m.matcher.accept_token(token):
                mask.set_error(f"token {token} was sampled but the grammar does not accept it")
            elif m.matcher.is_terminated():
                mask.set_terminated()
            else:
                m.matcher.fill_next_token_bitmask(mask.words.reshape(1, -1))
                mask.set_ready()
        except Exception as exc:  # noqa: BLE001 - the request fails, the worker goes on
            mask.set_error(f"grammar matcher failed: {exc}")

    @property
    def pending_matchers(self) -> int:
        """Matchers of requests not yet released (tests: nothing leaks)."""
        return len(self._matchers)

    def close(self) -> None:
        """Stop the worker (masks still waiting fail) and join it. Idempotent."""
        self._queue.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()


def _tokenizer_info(xgr: Any, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> Any:
    """xgrammar's view of a tvmlm Tokenizer: its vocabulary (special tokens other than the stop
    tokens blanked, so no grammar ever allows them), byte-level or not, and the stop tokens."""
    backend = tokenizer.backend
    specials = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    stops = [int(t) for t in stop_token_ids]
    vocab = []
    for i in range(vocab_size):
        token = backend.id_to_token(i)
        vocab.append("" if token is None or (i in specials and i not in stops) else token)
    meta = xgr.TokenizerInfo._detect_metadata_from_hf(backend.to_str())
    return xgr.TokenizerInfo(vocab, vocab_type=meta["vocab_type"], vocab_size=vocab_size,
                             stop_token_ids=stops, add_prefix_space=meta["add_prefix_space"])


def chat_grammar(req: Any, tool_format: Any) -> GrammarSpec | None:
    """The grammar a validated chat request asks for: its `response_format`, or with tool_choice
    "required" or a named function, a valid call in `tool_format`; None for free text."""
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        return GrammarSpec("json_object")
    if fmt is not None and fmt.type == "json_schema":
        schema = prepare_json_schema(fmt.json_schema.schema_, "response_format.json_schema.schema")
        return GrammarSpec("json_schema", json.dumps(schema))
    if tool_format is not None and req.tool_choice_mode in ("required", "named"):
        params = [prepare_json_schema(t.function.parameters or {"type": "object"}, f"tools[{i}].function.parameters")
                  for i, t in enumerate(req.tools)]
        tag = tool_format.structural_tag(req.tools, params, req.tool_choice, req.parallel_tool_calls)
        return GrammarSpec("structural_tag", tag)
    return None
