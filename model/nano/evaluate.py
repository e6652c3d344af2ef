"""Held-out evaluation of a nano model (`gpt-oss-triton eval-nano`): greedy replies through the engine to
conversations of a seed training never draws, parsed as harmony, checked per family.

Figures: well_formed (every reply: assistant messages on valid channels, ending with `<|return|>` after a
final answer or with `<|call|>` after a JSON call to a function); tool_call (the declared tool, arguments
that parse and equal the request's values); tool_result (the answer holds the tool's result); no_tool (no
call, an answer); arith1 / arith2 (the answer's result exact); greeting, repeat (the answer exact).
"""
from __future__ import annotations

import json
import re

from .. import harmony
from ..runtime.engine import Engine
from ..runtime.sampling import SamplingParams
from . import corpus

FIGURES = {"tool_call": "tool_call", "tool_answer": "tool_result", "no_tool": "no_tool", "arith1": "arith1",
           "arith2": "arith2", "greeting": "greeting", "repeat": "repeat"}
BARS = {"well_formed": 99, "tool_call": 95, "tool_result": 90, "no_tool": 90, "arith1": 90}


def replies(model, tokenizer, examples: list, max_new_tokens: int = 160, batch: int = 8) -> list[list[int]]:
    """Greedy reply ids to each example's prompt, `batch` at a time on one engine."""
    prompts = [corpus.encode(tokenizer, e)[0] for e in examples]
    stops = harmony.stop_tokens_for_assistant_actions(tokenizer)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    engine = Engine(model, max_batch=batch, max_len=max(map(len, prompts)) + max_new_tokens)
    requests = [engine.submit(p, params, stops) for p in prompts]
    while engine.busy:
        engine.step()
    return [list(r.tokens) for r in requests]


def well_formed(tokenizer, ids: list[int]) -> bool:
    if not ids or ids[-1] not in harmony.stop_tokens_for_assistant_actions(tokenizer):
        return False
    messages = harmony.parse(tokenizer, ids)
    if not messages or any(m["role"] != "assistant" or m.get("channel") not in harmony.CHANNELS for m in messages):
        return False
    last = messages[-1]
    if ids[-1] == tokenizer.token_id("<|call|>"):
        return last.get("recipient", "").startswith("functions.") and last.get("content_type") == "<|constrain|>json"
    return last["channel"] == "final" and all("recipient" not in m for m in messages)


def right(tokenizer, e: corpus.Example, ids: list[int]) -> bool:
    """Whether the reply does what the example's family asks (see the module's docstring)."""
    messages = harmony.parse(tokenizer, ids)
    calls = [m for m in messages if "recipient" in m]
    finals = [m["content"] for m in messages if m.get("channel") == "final" and "recipient" not in m]
    answered = ids[-1:] == [tokenizer.token_id("<|return|>")] and bool(finals)
    if e.family == "tool_call":
        if ids[-1:] != [tokenizer.token_id("<|call|>")] or len(calls) != 1:
            return False
        name, arguments = e.expect["call"]
        try:
            got = json.loads(calls[0]["content"])
        except ValueError:
            return False
        return calls[0]["recipient"] == f"functions.{name}" and got == arguments
    if not answered or calls:
        return False
    final = finals[-1]
    if e.family == "tool_answer":
        return all(v in final for v in e.expect["uses"])
    if e.family == "no_tool":
        return True
    if e.family in ("arith1", "arith2"):
        return re.search(rf"=\s*{re.escape(e.expect['result'])}(?!\d)", final) is not None
    return final.strip() == e.expect["answer"]


def evaluate(model, tokenizer, per_family: int = 50, seed: int = corpus.HELD_OUT_SEED, families=None,
             max_new_tokens: int = 160, batch: int = 8) -> dict:
    """{"n", "figures": {name: percent}, "families": {family: {"n", "right", "well_formed"}}, "samples"}."""
    families = list(families or FIGURES)
    examples = corpus.examples(seed, per_family, families=families)
    outs = replies(model, tokenizer, examples, max_new_tokens, batch)
    per = {f: {"n": 0, "right": 0, "well_formed": 0} for f in families}
    samples = {}
    for e, ids in zip(examples, outs):
        row = per[e.family]
        row["n"] += 1
        row["right"] += right(tokenizer, e, ids)
        row["well_formed"] += well_formed(tokenizer, ids)
        samples.setdefault(e.family, tokenizer.decode(ids))
    n = sum(r["n"] for r in per.values())
    figures = {"well_formed": 100 * sum(r["well_formed"] for r in per.values()) / max(n, 1)}
    figures.update({FIGURES[f]: 100 * r["right"] / max(r["n"], 1) for f, r in per.items()})
    return {"n": n, "per_family": per_family, "seed": seed, "figures": figures, "families": per,
            "samples": samples}


def format_report(report: dict) -> str:
    lines = [f"held-out nano evaluation: {report['per_family']} per family, seed {report['seed']}, greedy",
             f"{'figure':<12} {'%':>6}  bar"]
    for name, value in report["figures"].items():
        bar = BARS.get(name)
        lines.append(f"{name:<12} {value:6.1f}  " + (f">= {bar} {'met' if value >= bar else 'not met'}" if bar
                                                     else "(reported)"))
    return "\n".join(lines)
