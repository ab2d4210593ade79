"""Structured output by constrained decoding, through llguidance.

An engine builds one `GrammarFactory` for its vocabulary; each request with `guided` set gets
a `GrammarMatcher` that masks every token the grammar does not allow before sampling, so the
output always parses and validates, whatever the model. llguidance was chosen over xgrammar
by measurement (benchmarks/grammar_libraries.py: schema compile about 1 ms against 11-290 ms,
mask computation per token about 190 µs against 335 µs on the bundled model's vocabulary).

JSON is generated compactly (no free whitespace), which keeps small models from wandering
into endless newlines inside an object.

A request's grammar is compiled off the event loop (`build_matcher`) under a time limit, so a
schema that is slow to compile fails alone, with a clear error, while other streams go on.
The thread of a compilation that ran out of time cannot be stopped, so what bounds its work
is llguidance's own limits (`GRAMMAR_LIMITS`, and its "schema too large" checks): on the
bundled model's vocabulary the slowest schemas found within parley's schema bounds (products
of allOf and anyOf) took up to about 2.5 s on a 2-core machine before being compiled or
refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

import llguidance
import llguidance.numpy
import numpy as np

from parley.engines.base import GuidedDecoding
from parley.errors import InvalidRequestError

log = logging.getLogger(__name__)

GRAMMAR_COMPILE_TIMEOUT_S = 10.0  # the default; the environment variable below overrides it
GRAMMAR_TIMEOUT_ENV = "PARLEY_GRAMMAR_TIMEOUT_S"
# llguidance's resource limits (LLParserLimits), given explicitly: its defaults, except that
# errors leave out the parser state and grammar (they go back to the client). Its docs rate
# the fuel at ~50k/ms (initial), ~14k/ms (lexer step) and ~20k/ms (Earley items), yet some
# grammars' first mask takes seconds before hitting the item limit: that mask is computed
# when the matcher is built, under the compile time limit, not in a decoding step.
GRAMMAR_LIMITS = {
    "initial_lexer_fuel": 1_000_000,  # building the lexer's regexes
    "step_lexer_fuel": 200_000,  # one mask's lexer work
    "step_max_items": 50_000,  # one mask's parser work
    "max_lexer_states": 250_000,  # lexer states (1-2 kB each), built as generation goes
    "max_grammar_size": 500_000,  # symbols in the grammar's productions
    "verbose_errors": False,
}

_COMPACT = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
_ANY_OBJECT = {"type": "object"}


def grammar_compile_timeout_s() -> float:
    """The time a request's grammar may take to compile: GRAMMAR_COMPILE_TIMEOUT_S, or the
    environment's PARLEY_GRAMMAR_TIMEOUT_S (seconds) when set to a positive number."""
    raw = os.environ.get(GRAMMAR_TIMEOUT_ENV)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if value > 0:
            return value
        log.warning("ignoring %s=%r: not a positive number of seconds", GRAMMAR_TIMEOUT_ENV, raw)
    return GRAMMAR_COMPILE_TIMEOUT_S


# Where subschemas sit in a schema (JSON Schema 2020-12 and draft 7): a map of them, one, or a list.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONES = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "additionalItems",
                "unevaluatedItems", "propertyNames")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")


def closed_objects(schema, close: bool = True):
    """A copy of `schema` in which every object that lists its properties and says nothing of others takes no
    others, as OpenAI's strict mode and vLLM treat them. Without it a small model asked for `{"city": ...}`
    keeps adding keys of its own until its tokens run out, and the cut JSON is no call at all. The branches of
    an `allOf` are not closed themselves (each would forbid the others' keys); what is inside them is."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_ONES + _SCHEMA_LISTS:
        if key in out:
            out[key] = closed_objects(out[key])
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [closed_objects(sub, close=False) for sub in out["allOf"]]
    if close and "properties" in out and not any(
            k in out for k in ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf")):
        out["additionalProperties"] = False
    return out


def grammar_for(guided: GuidedDecoding) -> str:
    """The llguidance grammar text for a request's constraint."""
    schema = _ANY_OBJECT if guided.kind == "json_object" else closed_objects(guided.json_schema)
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_COMPACT)
    except ValueError as exc:
        raise InvalidRequestError(f"invalid JSON schema: {exc}") from None


class GrammarMatcher:
    """One request's position in its grammar: masks logits, follows accepted tokens.

    Building one compiles the grammar and computes the first mask (often the costliest, and
    where some grammars hit llguidance's limits), so that both happen where the compilation
    runs, under its time limit, rather than in the engine's decoding step."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str, vocab_size: int):
        self._matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0,
                                             limits=llguidance.LLParserLimits(**GRAMMAR_LIMITS))
        self._check()
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, vocab_size)
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        self._check()
        self._mask_ready = True  # the bitmask holds the mask for the current position

    def _check(self) -> None:
        if self._matcher.is_error():
            reason = self._matcher.get_error().strip().splitlines()[0]  # no backtrace
            raise InvalidRequestError(f"the output constraint cannot be used: {reason}")

    @property
    def finished(self) -> bool:
        return self._matcher.is_stopped()

    def mask(self, scores: np.ndarray) -> np.ndarray:
        """Set the logits of disallowed tokens to -inf (in place; `scores` is [vocab])."""
        if not self._mask_ready:
            llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        self._mask_ready = False
        # bit j of 32-bit word i allows token 32·i + j; in little-endian byte order, unpacking the bytes
        # least significant bit first gives the bits in token order
        allowed = np.unpackbits(self._bitmask[0].astype("<i4", copy=False).view(np.uint8), bitorder="little")
        vocab = scores.shape[-1]
        if allowed.size < vocab:
            scores[allowed.size:] = -np.inf
        scores[: min(vocab, allowed.size)][allowed[:vocab] == 0] = -np.inf
        return scores

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            # The mask allowed it, so the grammar itself gave up (one of llguidance's limits, as a schema whose
            # alternatives multiply): the request's constraint is too complex to follow.
            reason = (self._matcher.get_error() or "").strip().splitlines()[0:1] or ["refused"]
            raise InvalidRequestError(f"the output constraint is too complex to follow while generating: {reason[0]}; "
                                      "simplify the schema")


class GrammarFactory:
    """Per engine: the llguidance view of its vocabulary (built once, about a second)."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    @classmethod
    def from_hf(cls, hf_tokenizer, vocab_size: int, eos_ids: Sequence[int]) -> GrammarFactory:
        import llguidance.hf

        return cls(llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size, eos_token=sorted(eos_ids)), vocab_size)

    @classmethod
    def from_llamacpp(cls, vocab, vocab_size: int, eos_ids: Sequence[int]) -> GrammarFactory:
        """From a llama.cpp vocabulary (`llama_model_get_vocab`)."""
        import llguidance.llamacpp

        return cls(llguidance.llamacpp.lltokenizer_from_vocab(vocab, n_vocab=vocab_size, eos_token=sorted(eos_ids)),
                   vocab_size)

    def matcher(self, guided: GuidedDecoding) -> GrammarMatcher:
        return GrammarMatcher(self.tokenizer, grammar_for(guided), self.vocab_size)


async def build_matcher(factory: GrammarFactory, guided: GuidedDecoding,
                        timeout_s: float | None = None) -> GrammarMatcher:
    """`factory.matcher(guided)` in a thread, within `timeout_s` (grammar_compile_timeout_s()
    by default); past it the request is refused. The thread runs on to llguidance's limits,
    and its matcher is dropped."""
    limit = grammar_compile_timeout_s() if timeout_s is None else timeout_s
    try:
        return await asyncio.wait_for(asyncio.to_thread(factory.matcher, guided), limit)
    except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
        raise InvalidRequestError(
            f"the output constraint (JSON schema or tools) took longer than {limit:g} s to compile; "
            "simplify the schema") from None
