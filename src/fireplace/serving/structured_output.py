"""Structured output: OpenAI's `response_format` compiled to a per-sample token mask (xgrammar).

    factory = make_structured_processor(response_format, engine.tokenizer,        # in the replica
                                        vocab_size=engine.model_config.vocab_size,
                                        eos_token_ids=engine.eos_token_ids)
    params = SamplingParams(..., logits_processor=factory)    # factory is None for {"type": "text"}
    check_response_format(response_format)                    # anywhere (gateway): 400s early

Accepted `response_format` values (anything else is an InvalidRequestError, param "response_format"):
    {"type": "text"}                                 no constraint (returns None)
    {"type": "json_object"}                          any JSON object
    {"type": "json_object", "schema": {...}}         Fireworks' form of a schema constraint
    {"type": "json_schema", "json_schema": {"name": "...", "schema": {...}, "strict": bool,
                                            "description": "..."}}
`strict` must be a boolean if given; the schema is enforced either way. The schema is checked
against the JSON Schema meta-schema (draft 2020-12) first, for a message that says where it is
wrong, then compiled; schemas xgrammar cannot compile (e.g. a dangling $ref, an impossible
range) are 400s too. Keywords xgrammar does not enforce (e.g. `not`) are accepted and ignored,
as in vLLM. Limits: MAX_SCHEMA_BYTES of serialized schema.

The grammar prints JSON with ", " and ": " separators and no other whitespace: a small model
given free whitespace can emit newlines until max_tokens. EOS is allowed only once the value is
complete, so an output that ends with finish_reason "stop" always parses; one cut by max_tokens
(finish_reason "length") does not. Hence the factory refuses `ignore_eos` and `min_tokens > 0`.

xgrammar was chosen over llguidance by bench/structured_output.py on this tokenizer (49k vocab):
per-step mask + accept ~7 us vs ~23 us mean; its cold compile is slower (~2-8 ms vs ~0.4-1 ms)
but the compiler caches grammars by schema, and compile happens once per request.
"""
from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Sequence as SequenceOf
from typing import Any

import torch

from fireplace.engine.errors import InvalidRequestError
from fireplace.engine.logits_processors import LogitsProcessor, allow_only, bitmask_words

__all__ = ["MAX_SCHEMA_BYTES", "GrammarProcessor", "StructuredOutputFactory", "check_response_format",
           "make_structured_processor"]

MAX_SCHEMA_BYTES = 64 << 10
SEPARATORS = (", ", ": ")
_COMPILER_CACHE_BYTES = 64 << 20
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PARAM = "response_format"


class GrammarProcessor(LogitsProcessor):
    """One sample's grammar matcher; catches up on the sample's tokens each step."""

    def __init__(self, matcher, stop_token_ids: SequenceOf[int], vocab_size: int):
        self._matcher = matcher
        self._stop_token_ids = list(stop_token_ids)
        self._words = bitmask_words(vocab_size)
        self._num_accepted = 0
        self._failed = False  # a token the grammar rejected: only a stop token may follow

    @property
    def is_failed(self) -> bool:
        return self._failed

    def fill_bitmask(self, output_token_ids: SequenceOf[int], bitmask: torch.Tensor, row: int) -> None:
        if len(output_token_ids) < self._num_accepted:  # never in our engine; stay correct anyway
            self._matcher.rollback(self._num_accepted - len(output_token_ids))
            self._num_accepted = len(output_token_ids)
        for token in output_token_ids[self._num_accepted:]:
            if not self._failed and not self._matcher.accept_token(int(token)):
                self._failed = True
            self._num_accepted += 1
        if self._failed or self._matcher.is_terminated():
            allow_only(bitmask[row], self._stop_token_ids)
        elif bitmask.shape[1] == self._words:
            self._matcher.fill_next_token_bitmask(bitmask, row)
        else:  # the logits are wider or narrower than the grammar's vocabulary
            own = torch.full((1, self._words), -1, dtype=torch.int32)
            self._matcher.fill_next_token_bitmask(own, 0)
            n = min(self._words, bitmask.shape[1])
            bitmask[row].zero_()
            bitmask[row, :n] = own[0, :n]


class StructuredOutputFactory:
    """SamplingParams.logits_processor for one request: a new matcher per sample."""

    def __init__(self, compiled, stop_token_ids: SequenceOf[int], vocab_size: int, description: str):
        self.compiled = compiled
        self.stop_token_ids = list(stop_token_ids)
        self.vocab_size = vocab_size
        self.description = description  # e.g. "json_schema 'person'", for logs

    def __call__(self) -> GrammarProcessor:
        import xgrammar as xgr
        matcher = xgr.GrammarMatcher(self.compiled, override_stop_tokens=self.stop_token_ids)
        return GrammarProcessor(matcher, self.stop_token_ids, self.vocab_size)

    def check_params(self, params) -> None:
        """Called by SamplingParams.validate(): refuse settings that fight the grammar's end."""
        if params.ignore_eos:
            raise InvalidRequestError("ignore_eos cannot be combined with response_format: the grammar "
                                      "ends the output with EOS once the JSON value is complete", "ignore_eos")
        if params.min_tokens:
            raise InvalidRequestError("min_tokens cannot be combined with response_format: EOS must stay "
                                      "allowed once the JSON value is complete", "min_tokens")

    def __repr__(self) -> str:
        return f"StructuredOutputFactory({self.description})"


def make_structured_processor(response_format: Any, tokenizer, *, vocab_size: int | None = None,
                              eos_token_ids: SequenceOf[int] | None = None) -> StructuredOutputFactory | None:
    """Compile `response_format` for this tokenizer; None when it asks for plain text.

    vocab_size: the model's logits width (model_config.vocab_size), default len(tokenizer).
    eos_token_ids: the tokens that end the output (the engine's eos_token_ids), default the
    tokenizer's EOS. Raises InvalidRequestError(param="response_format") for a bad value.
    Compiling takes milliseconds (cached per schema); run it off the event loop if schemas are big.
    """
    schema, description = check_response_format(response_format)
    if schema is None:
        return None
    info, compiler = _compiler_for(tokenizer, vocab_size or len(tokenizer))
    try:
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                separators=SEPARATORS, strict_mode=True)
    except (RuntimeError, ValueError) as exc:
        raise InvalidRequestError(f"response_format schema cannot be compiled: {_library_message(exc)}",
                                  _PARAM) from exc
    stop = list(eos_token_ids) if eos_token_ids else list(info.stop_token_ids)
    if not stop:
        raise InvalidRequestError("this model has no EOS token, so structured output cannot end", _PARAM)
    return StructuredOutputFactory(compiled, stop, info.vocab_size, description)


def check_response_format(response_format: Any) -> tuple[dict | None, str]:
    """-> (JSON schema to enforce or None for text, a short description); InvalidRequestError
    for a bad value. Needs no tokenizer: a gateway can call it to answer 400 early."""
    if response_format is None:
        return None, "text"
    if not isinstance(response_format, dict):
        raise InvalidRequestError("response_format must be an object with a `type`", _PARAM)
    kind = response_format.get("type")
    if kind == "text":
        return None, "text"
    if kind == "json_object":
        schema = response_format.get("schema")
        if schema is None:
            return {"type": "object"}, "json_object"
        return _checked_schema(schema, "response_format.schema"), "json_object with schema"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequestError("response_format.json_schema must be an object with `name` and `schema`",
                                      _PARAM)
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequestError("response_format.json_schema.name must be 1-64 characters of "
                                      "a-z, A-Z, 0-9, _ and -", _PARAM)
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequestError("response_format.json_schema.strict must be a boolean", _PARAM)
        schema = spec.get("schema", {})  # OpenAI: an absent schema means any JSON object
        return _checked_schema(schema or {"type": "object"}, "response_format.json_schema.schema"), \
            f"json_schema {name!r}"
    raise InvalidRequestError(f"response_format.type must be one of text, json_object, json_schema; "
                              f"got {str(kind)[:40]!r}", _PARAM)


def _checked_schema(schema: Any, where: str) -> dict:
    import jsonschema

    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{where} must be a JSON object (a JSON Schema)", _PARAM)
    size = len(json.dumps(schema))
    if size > MAX_SCHEMA_BYTES:
        raise InvalidRequestError(f"{where} is {size} bytes; the limit is {MAX_SCHEMA_BYTES}", _PARAM)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "".join(f"[{p!r}]" for p in exc.path)
        raise InvalidRequestError(f"{where}{path} is not a valid JSON Schema: {exc.message[:300]}", _PARAM) from exc
    return schema


def _library_message(exc: Exception) -> str:
    # xgrammar prefixes "[hh:mm:ss] /project/cpp/file.cc:123: "; keep the message
    text = str(exc).strip()
    return re.sub(r"^\[[0-9:]+\]\s+\S+:\d+:\s*", "", text)[:300]


# One xgrammar compiler per tokenizer object and vocabulary width: building the tokenizer view
# takes ~0.5 s, and the compiler caches compiled grammars by schema.
_compilers: "weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, Any]]]" = weakref.WeakKeyDictionary()
_compilers_lock = threading.Lock()


def _compiler_for(tokenizer, vocab_size: int):
    import xgrammar as xgr

    with _compilers_lock:
        per_vocab = _compilers.setdefault(tokenizer, {})
        entry = per_vocab.get(vocab_size)
        if entry is None:
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
            entry = per_vocab[vocab_size] = (info, xgr.GrammarCompiler(
                info, max_threads=1, cache_enabled=True, cache_limit_bytes=_COMPILER_CACHE_BYTES))
        return entry
