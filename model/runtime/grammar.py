"""Constrained decoding: a request's tokens held to a grammar, one mask of allowed ids per step (llguidance).

    grammar = json_reply_grammar(tokenizer, json_schema_grammar(schema, strict=True))
    constraint = GrammarConstraint(tokenizer, grammar, model.config.vocab_size, reasoning_budget=900)
    engine.submit(prompt, params, stop_tokens, constraint=constraint)

Grammars are llguidance's Lark dialect, where `<|end|>` names a special token and `%json {...}` a JSON Schema.
`json_reply_grammar` holds a harmony reply to: an optional analysis message whose text is free (any ordinary
token), then the final message, whose content is the JSON and which ends with `<|return|>` (or `<|end|>` and
`<|return|>`) exactly when the JSON is complete. `json_text_grammar` is the same JSON for a raw completion.

The engine asks every constrained row for its mask before sampling (`GrammarConstraint.fill_masks`: all grammar
rows in one parallel call into llguidance's Rust executor, off the GIL) and feeds each drawn token back
(`advance`).
A `reasoning_budget` ends the analysis with `<|end|>` after that many tokens, so the answer gets its room:
without it a model that reasons past max_tokens would never reach its JSON.

Why llguidance (measured in docs of bench/grammar_masks.py): no dependencies (a Rust wheel for CPython 3.9+
on Linux, macOS and Windows), MIT licence, special tokens and token ranges inside grammars (harmony's headers),
JSON Schema compiled lazily in ~3 ms per request, and masks at batch 64 in ~155 us per row with the o200k
vocabulary on one shared core, computed on the CPU while the GPU runs the step's forward.
"""
from __future__ import annotations

import json
import threading
import weakref

import llguidance
import numpy as np
import torch

from ..tokenizer import Tokenizer
from .sampling import unpack_bits

# JSON whitespace: at most one space wherever JSON allows whitespace (as outlines does), so that no model can
# spend its tokens on blanks; the JSON is otherwise compact.
_WHITESPACE = " "

_cache_lock = threading.Lock()
_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Tokenizer -> {vocab_size: LLTokenizer}
_executor: llguidance.LLExecutor | None = None


def grammar_tokenizer(tokenizer: Tokenizer, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's view of `tokenizer` with masks `vocab_size` ids wide (the model's vocabulary; ids past the
    tokenizer's are never allowed). Built once per tokenizer and size: ~10 s for o200k, instant for the
    byte-level one; `warm_up` builds it ahead."""
    with _cache_lock:
        sizes = _tokenizers.setdefault(tokenizer, {})
        if vocab_size not in sizes:
            sizes[vocab_size] = llguidance.LLTokenizer(tokenizer.backend_json(), n_vocab=vocab_size,
                                                       eos_token=tokenizer.token_id("<|return|>"))
        return sizes[vocab_size]


def warm_up(tokenizer: Tokenizer, vocab_size: int) -> threading.Thread:
    """Builds the grammar tokenizer on a background thread (a server starts it, so the first structured request
    does not wait for it)."""
    thread = threading.Thread(target=grammar_tokenizer, args=(tokenizer, vocab_size), daemon=True,
                              name="grammar-tokenizer")
    thread.start()
    return thread


def json_schema_grammar(schema: dict | None, strict: bool = True) -> str:
    """The Lark rule body for a JSON value: `schema` (None: any JSON object). strict: every keyword must be
    supported (else `GrammarConstraint` raises); not strict: unsupported keywords and formats are ignored."""
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON Schema must be an object, got {type(schema).__name__}")
    options = {"whitespace_pattern": _WHITESPACE, "lenient": not strict}
    # x-guidance holds llguidance's options; a user's own is replaced, not merged.
    return "%json " + json.dumps({**schema, "x-guidance": options})


def json_reply_grammar(tokenizer: Tokenizer, json_rule: str) -> str:
    """A harmony assistant reply (after the prompt's `<|start|>assistant`): free reasoning, then `json_rule` as
    the final answer."""
    return "\n".join([
        "start: analysis? final",
        f"analysis: <|channel|> \"analysis\" <|message|> {_ordinary_tokens(tokenizer)}* <|end|> <|start|> \"assistant\"",
        "final: <|channel|> \"final\" (\" \" <|constrain|> \"json\")? <|message|> answer (<|return|> | <|end|> <|return|>)",
        f"answer: {json_rule}",
    ])


def json_text_grammar(json_rule: str) -> str:
    """A raw completion that is `json_rule`, then `<|endoftext|>`."""
    return f"start: answer <|endoftext|>\nanswer: {json_rule}"


def _ordinary_tokens(tokenizer: Tokenizer) -> str:
    """A Lark token range of every id that is not a special token."""
    ranges, start = [], 0
    for special in sorted(tokenizer.special_ids) + [tokenizer.vocab_size]:
        if special > start:
            ranges.append(f"{start}-{special - 1}")
        start = special + 1
    return f"<[{','.join(ranges)}]>"


class GrammarConstraint:
    """A request held to a Lark grammar (the engine's TokenConstraint). Raises ValueError for a grammar or
    schema llguidance rejects, naming the problem. Compiling is lazy: ~ms for typical JSON Schemas."""

    def __init__(self, tokenizer: Tokenizer, grammar: str, vocab_size: int, *, reasoning_budget: int | None = None):
        llt = grammar_tokenizer(tokenizer, vocab_size)
        compiled = llguidance.LLMatcher.grammar_from_lark(grammar)
        problem = llguidance.LLMatcher.validate_grammar(compiled, llt)
        if problem:
            raise ValueError(problem.splitlines()[0])
        self.matcher = llguidance.LLMatcher(llt, compiled, log_level=0)
        self.vocab_size = vocab_size
        self._ids = {name: tokenizer.token_id(name) for name in ("<|channel|>", "<|message|>", "<|end|>")}
        self._decode = tokenizer.decode
        self._budget = reasoning_budget
        self._header: list[int] | None = None  # ids since <|channel|>, until <|message|>
        self._analysis = 0  # tokens of the analysis text so far; -1 outside one
        self.error = ""

    @property
    def forced(self) -> int | None:
        """The one id the next token must be, when the reasoning budget is spent (else None)."""
        if self._budget is not None and self._analysis >= self._budget:
            return self._ids["<|end|>"]
        return None

    def advance(self, token: int) -> None:
        """Feeds the drawn token to the grammar. A token the mask did not allow (only possible if the caller
        ignored it) leaves the grammar in error: from then on only `<|return|>` is allowed and `error` says why."""
        if not self.matcher.consume_token(token) and not self.error:
            self.error = self.matcher.get_error()
        if token == self._ids["<|channel|>"]:
            self._header, self._analysis = [], -1
        elif token == self._ids["<|message|>"] and self._header is not None:
            channel = self._decode(self._header).strip()
            self._header, self._analysis = None, 0 if channel == "analysis" else -1
        elif self._header is not None:
            self._header.append(token)
        elif token == self._ids["<|end|>"]:
            self._analysis = -1
        elif self._analysis >= 0:
            self._analysis += 1

    def allowed_tokens(self) -> torch.Tensor:
        """The ids allowed next, as bool [vocab_size] (the one-request form of `fill_masks`)."""
        bits = torch.zeros(1, (self.vocab_size + 31) // 32, dtype=torch.int32)
        self.fill_masks([(self, 0)], bits)
        return unpack_bits(bits, self.vocab_size)[0]

    @staticmethod
    def fill_masks(items: list[tuple[GrammarConstraint, int]], out: torch.Tensor) -> None:
        """Each (constraint, row)'s allowed ids into bits out[row] ([rows, ceil(V / 32)] int32 on the host), in one
        parallel call into llguidance's executor (it releases the GIL)."""
        global _executor
        free = [(c.matcher, row) for c, row in items if c.forced is None]
        if free:
            if _executor is None:
                _executor = llguidance.LLExecutor()
            _executor.unsafe_compute_mask_ptr(free, out.data_ptr(), out.shape[1] * 4, out.shape[0])
        for c, row in items:
            if c.forced is not None:
                out[row] = 0
                out[row, c.forced >> 5] = int(np.array(1 << (c.forced & 31), dtype=np.uint32).view(np.int32))
