"""Structured outputs and strict tools on the wire: Chat Completions' `response_format`, the Responses API's
`text.format` and tools marked `strict` become one grammar constraint on the reply (runtime/grammar.py).

Only what must be constrained is: the reasoning and preambles stay free, the final answer's content follows
the format (`json_object`: any JSON object; `json_schema`: its schema), a strict tool's arguments follow its
`parameters`, and the tokens that end a message are allowed exactly when its content is complete. A reply
that reasons past `max_tokens - min(max_tokens // 2, ANSWER_RESERVE)` tokens has its reasoning ended there, so
the answer always has room. A schema is enforced whether `strict` is set or not: with `strict`, a keyword or
format the grammar engine does not support is a 400; without, it is ignored (the rest is still enforced).
"""
from __future__ import annotations

import asyncio
import re

from ..runtime import grammar
from .errors import APIError

ANSWER_RESERVE = 1024  # tokens kept for the answer when the reasoning is cut short
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def format_rule(fmt, param: str, *, flat: bool = False) -> tuple[str | None, dict | None]:
    """(JSON rule, prompt section) of a response format: Chat Completions' `{"type": "json_schema",
    "json_schema": {"name", "description", "schema", "strict"}}` or, `flat`, the Responses API's `{"type":
    "json_schema", "name", ...}`; `json_object`; `text` or None -> (None, None). The section ({"name",
    "description", "schema"}) is what the prompt shows the model (harmony's "# Response Formats")."""
    if fmt is None:
        return None, None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise APIError(400, f"{param}.type must be 'text', 'json_object' or 'json_schema'", param=param.split(".")[0])
    if fmt["type"] == "text":
        return None, None
    if fmt["type"] == "json_object":
        return grammar.json_schema_grammar(None), None
    spec = fmt if flat else fmt.get("json_schema")
    where = param if flat else f"{param}.json_schema"
    if not isinstance(spec, dict):
        raise APIError(400, f"{where} must be an object with 'name' and 'schema'", param=param.split(".")[0])
    name, schema, strict = spec.get("name"), spec.get("schema", {}), spec.get("strict")
    if not isinstance(name, str) or not _NAME.match(name):
        raise APIError(400, f"{where}.name must be 1 to 64 letters, digits, '_' or '-', got {name!r:.80}",
                       param=param.split(".")[0])
    if not isinstance(schema, dict) or not isinstance(strict, (bool, type(None))):
        raise APIError(400, f"{where}.schema must be a JSON Schema object and strict a boolean",
                       param=param.split(".")[0])
    section = {"name": name, "description": spec.get("description"), "schema": schema}
    return grammar.json_schema_grammar(schema, strict=bool(strict)), section


def tool_rules(tools: list[dict], strict_default: bool = False) -> list[tuple[str, str | None]]:
    """(name, arguments rule) of each Chat Completions tool: its `parameters` schema when `strict` (default
    `strict_default`), else None (free arguments)."""
    rules = []
    for tool in tools:
        function = tool.get("function", {})
        strict = function.get("strict", strict_default)
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        rules.append((function["name"], grammar.json_schema_grammar(schema, strict=True) if strict else None))
    return rules


def _check_rules(ctx, rules, vocab: int, room: int) -> None:
    """A 400 for the first (JSON rule, request field) whose schema no reply of `room` tokens can meet. A
    `max_tokens` below what a schema needs is no error: the reply ends "length", as OpenAI's does."""
    for rule, param in rules:
        if rule is not None:
            try:
                grammar.check_satisfiable(ctx.tokenizer, rule, vocab, room)
            except ValueError as e:
                raise APIError(400, f"the {'response format' if param != 'tools' else 'strict tool parameters'} "
                                    f"cannot be met: {e}", param=param) from None


async def reply_constraint(ctx, plan, *, final: str | None, parallel: bool, max_tokens: int | None,
                           prompt_len: int, strict_default: bool = False, format_param: str = "response_format"):
    """The reply's constraint: a grammar when the answer has a format or a tool is strict, else what the
    tool plan forces (tool_calls.ForcedCall or None); a 400 naming `format_param` or `tools` for a schema no
    reply the context has room for can meet. Built off the event loop: the grammar engine's view of the tokenizer
    takes ~10 s the first time (app.create_app starts it early)."""
    tools = tool_rules(plan.tools, strict_default)
    if final is None and all(rule is None for _, rule in tools):
        return plan.constraint(ctx.tokenizer)
    room = ctx.worker.engine.max_len - prompt_len
    if max_tokens is None:  # as ctx.start resolves it
        max_tokens = min(room, ctx.default_max_tokens or room)
    budget = max(max_tokens - min(max_tokens // 2, ANSWER_RESERVE), 0)
    vocab = ctx.worker.engine.model.config.vocab_size

    def build():
        _check_rules(ctx, [(final, format_param), *((rule, "tools") for _, rule in tools)], vocab, room)
        lark = grammar.reply_grammar(ctx.tokenizer, final=final, tools=tools, parallel=parallel,
                                     forced=plan.prefix)
        return grammar.GrammarConstraint(ctx.tokenizer, lark, vocab, reasoning_budget=budget)

    try:
        return await asyncio.to_thread(build)
    except ValueError as e:
        raise APIError(400, f"the response format or a strict tool's parameters cannot be enforced: {e}",
                       param="tools" if final is None else "response_format") from None


async def text_constraint(ctx, final: str | None, prompt_len: int):
    """A raw completion's constraint: the JSON of `final`, then `<|endoftext|>` (None: no constraint); a 400 for
    a schema no completion after `prompt_len` tokens can meet."""
    if final is None:
        return None
    vocab = ctx.worker.engine.model.config.vocab_size

    def build():
        _check_rules(ctx, [(final, "response_format")], vocab, ctx.worker.engine.max_len - prompt_len)
        return grammar.GrammarConstraint(ctx.tokenizer, grammar.json_text_grammar(final), vocab)

    try:
        return await asyncio.to_thread(build)
    except ValueError as e:
        raise APIError(400, f"the response format cannot be enforced: {e}", param="response_format") from None
