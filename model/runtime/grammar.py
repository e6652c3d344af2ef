"""Constrained decoding: a request's tokens held to a grammar, one mask of allowed ids per step (llguidance).

    grammar = reply_grammar(tokenizer, final=json_schema_grammar(schema, strict=True))
    constraint = GrammarConstraint(tokenizer, grammar, model.config.vocab_size, reasoning_budget=900)
    engine.submit(prompt, params, stop_tokens, constraint=constraint)

Grammars are llguidance's Lark dialect, where `<|end|>` names a special token and `%json {...}` a JSON Schema.
`reply_grammar` holds a harmony reply to its structure and constrains only what it must: reasoning and
preambles are free (any ordinary token), the final answer's content is the JSON (structured outputs) and a
strict tool's arguments follow its schema; the tokens that end a message are allowed exactly when its content
is complete. `json_text_grammar` is a JSON value for a raw completion.

The engine asks every constrained row for its mask before sampling (`GrammarConstraint.fill_masks`: all grammar
rows in one parallel call into llguidance's Rust executor, off the GIL) and feeds each drawn token back
(`advance`). A `reasoning_budget` ends the notes (analysis, and commentary preambles) with `<|end|>` after that many
tokens in all, so the answer gets its room: without it a model that reasons or writes preambles past max_tokens
would never reach its JSON.

Why llguidance, not xgrammar or outlines-core (README, "Structured outputs", has the measurements): it has no
dependencies (an abi3 Rust wheel), MIT licence, special tokens and token ranges inside grammars (harmony's
headers), JSON Schemas compiled lazily in ~3 ms per request, and masks at batch 64 as fast as xgrammar's with
the o200k vocabulary, computed on the CPU while the GPU runs the step's forward.
"""
from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Sequence

import llguidance
import numpy as np
import torch

from ..tokenizer import Tokenizer
from .sampling import unpack_bits

# JSON whitespace: at most one space wherever JSON allows whitespace (as outlines does), so that no model can
# spend its tokens on blanks; the JSON is otherwise compact.
_WHITESPACE = " "

_CALL_START = "<|channel|>commentary to=functions."
MAX_NOTES = 4  # analysis or commentary messages before the answer or a call: a bound, so that a model past its
# reasoning budget cannot loop on empty ones

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


def reply_grammar(tokenizer: Tokenizer, *, final: str | None = None, tools: Sequence[tuple[str, str | None]] = (),
                  parallel: bool = False, forced: str = "") -> str:
    """A harmony assistant reply, from where the prompt left it (after `<|start|>assistant` and `forced`, the
    header the prompt forced: "", "<|channel|>", a call's header up to where the tools' names part, or a call's
    whole header): up to MAX_NOTES free messages on analysis (reasoning) or, when there are tools, commentary
    (preambles), then either the final answer, its content `final` (a JSON
    rule; None: free text), or a call of one of `tools` ((name, arguments rule; None: free text)), several in a
    row with `parallel`. Headers are harmony's canonical ones; the reply ends with `<|return|>` after the answer
    (`<|end|>` first is allowed) and `<|call|>` after a call."""
    text = f"{_ordinary_tokens(tokenizer)}*"
    calls = 'call (<|start|> "assistant" call)*' if parallel else "call"
    names = [name for name, _ in tools]
    lines = [f"text: {text}",
             "call: <|channel|> call_body",
             "call_body: \"commentary to=functions.\" (" + " | ".join(f"call{i}" for i in range(len(tools))) + ")"
             if tools else "",
             *(f"call{i}: {json.dumps(name + ' ')} <|constrain|> \"json\" <|message|> args{i} <|call|>\n"
               f"args{i}: {rule or 'text'}" for i, (name, rule) in enumerate(tools))]
    if not forced:
        last = f"final | {calls}" if tools else "final"
        lines += [f'start: (note <|end|> <|start|> "assistant"){{0,{MAX_NOTES}}} ({last})',
                  # preambles only before calls: with no tools the content must be the answer alone
                  'note: <|channel|> ' + ('("analysis" | "commentary")' if tools else '"analysis"') + ' <|message|> text',
                  'final: <|channel|> "final" (" " <|constrain|> "json")? <|message|> answer '
                  '(<|return|> | <|end|> <|return|>)',
                  f"answer: {final or 'text'}"]
    elif forced.startswith(_CALL_START) and not forced.endswith("<|message|>") and tools:
        # the header up to where the names part: the rest of one of theirs
        stem = forced.removeprefix(_CALL_START)
        rests = [f"{json.dumps(name[len(stem):] + ' ')} <|constrain|> \"json\" <|message|> args{i} <|call|>"
                 for i, name in enumerate(names) if name.startswith(stem)]
        if not rests:
            raise ValueError(f"the forced header {forced!r} starts no tool's call")
        lines.append(f"start: ({' | '.join(rests)})" + (' (<|start|> "assistant" call)*' if parallel else ""))
    elif forced == "<|channel|>" and tools:
        lines.append("start: call_body" + (' (<|start|> "assistant" call)*' if parallel else ""))
    elif forced.endswith("<|message|>") and forced.count("to=functions.") == 1:
        name = forced.split("to=functions.")[1].split(" ")[0].split("<|")[0]
        if name not in names:
            raise ValueError(f"the forced call {name!r} is not among the tools")
        i = names.index(name)
        lines.append(f"start: args{i} <|call|>" + (' (<|start|> "assistant" call)*' if parallel else ""))
    else:
        raise ValueError(f"cannot continue a reply from the forced header {forced!r}")
    return "\n".join(line for line in lines if line)


def check_satisfiable(tokenizer: Tokenizer, json_rule: str, vocab_size: int, room: int) -> None:
    """A ValueError unless a JSON value of `json_rule` can start, and the text its schema forces (what llguidance
    fast-forwards: where one way on is left) lexes and fits in `room` tokens (what the context leaves a reply).
    llguidance builds its parser and lexer as tokens come, so a schema no value meets (a `$ref` that refers only
    to itself, a required property that recurses forever) or one past the lexer's limits (the pattern
    `^(a{1000}){1000}$`) would otherwise show only mid-reply, ending the JSON short of complete."""
    if json_rule.startswith("%json "):  # checked without whitespace: it never decides, and leaves more forced
        schema = json.loads(json_rule.removeprefix("%json "))
        json_rule = "%json " + json.dumps({**schema, "x-guidance": {**schema["x-guidance"], "whitespace_pattern": ""}})
    matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer, vocab_size),
                                   llguidance.LLMatcher.grammar_from_lark(f"start: {json_rule}"), log_level=0)
    forced = 0
    while not matcher.is_error() and forced <= room:
        tokens = matcher.compute_ff_tokens()
        if not tokens:  # a choice is left: some token must be allowed (an empty mask also sets the error)
            if not any(matcher.compute_logit_bias()) and not matcher.is_error():
                raise ValueError("no JSON value satisfies the schema")
            break
        matcher.consume_tokens(tokens)
        forced += len(tokens)
    if matcher.is_error():
        problem = _first_line(matcher.get_error())
        raise ValueError("no JSON value satisfies the schema" if problem == "NoExtensionBias" else problem)
    if forced > room:
        raise ValueError(f"the schema forces {forced} tokens or more, past the {room} the context leaves the reply")


def _first_line(problem: str) -> str:
    """An llguidance error's first line, without the grammar position ("at 4(9): ")."""
    return re.sub(r"^at \d+\(\d+\): ", "", problem.splitlines()[0])


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
            raise ValueError(_first_line(problem))
        self.matcher = llguidance.LLMatcher(llt, compiled, log_level=0)
        self.vocab_size = vocab_size
        self._ids = {name: tokenizer.token_id(name) for name in ("<|channel|>", "<|message|>", "<|end|>")}
        self._decode = tokenizer.decode
        self._budget = reasoning_budget
        self._header: list[int] | None = None  # ids since <|channel|>, until <|message|>
        self._in_note = False
        self._reasoned = 0  # note tokens so far (analysis and preambles), over all the notes
        self.error = ""

    @property
    def forced(self) -> int | None:
        """The one id the next token must be, when the reasoning budget is spent (else None)."""
        if self._in_note and self._budget is not None and self._reasoned >= self._budget:
            return self._ids["<|end|>"]
        return None

    def advance(self, token: int) -> None:
        """Feeds the drawn token to the grammar. A token the mask did not allow (only possible if the caller
        ignored it) leaves the grammar in error: from then on only `<|return|>` is allowed and `error` says why."""
        if not self.matcher.consume_token(token) and not self.error:
            self.error = self.matcher.get_error()
        if token == self._ids["<|channel|>"]:
            self._header, self._in_note = [], False
        elif token == self._ids["<|message|>"] and self._header is not None:
            self._in_note = self._decode(self._header).strip() in ("analysis", "commentary")
            self._header = None
        elif self._header is not None:
            self._header.append(token)
        elif token == self._ids["<|end|>"]:
            self._in_note = False
        elif self._in_note:
            self._reasoned += 1

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
