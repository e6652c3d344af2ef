"""The nano training corpus: seeded harmony conversations, rendered to (prompt ids, completion ids).

Every name and value a reply repeats (a user's name, words to repeat, tool names, parameter names, values,
tool results) is made up fresh for each sample, so no pool can be memorised and copying from the prompt is
the only way to lower the loss. Tools are found the same way: a request shares a made-up topic word with
one tool's description (or with none), and the analysis writes that word, then the tool's name, then the
call's arguments, before the call itself, so the call is a copy of the analysis.

`sample(rng, family)` is one conversation as an `Example` (messages, tools, the expected reply and what the
evaluation checks); `encode(tokenizer, example)` renders it; `examples(seed, n)` and `batch_examples(seed,
step, n)` are the deterministic streams training and evaluation draw from (held-out = another seed).
"""
from __future__ import annotations

import dataclasses
import json
import random

from .. import harmony

# conversations held out from training are drawn from this seed (plus the run's), which training never uses
HELD_OUT_SEED = 1_000_000_007
# family -> weight in the training mix
FAMILIES = {"greeting": 8, "repeat": 10, "arith1": 12, "arith2": 10, "tool_call": 30, "tool_answer": 15,
            "no_tool": 15}

_ONSETS = "b d f g k l m n p r s t v z br dr gr kl pl st tr".split()
_VOWELS = "a e i o u".split()
_CODAS = ["", "", "", "n", "r", "s", "l", "k"]
_VERBS = ("get", "find", "check", "fetch", "look_up")
_GREETINGS = ("Hi!", "Hello.", "Hey there.", "Good morning!", "Hello!", "Hi there.")
_REPEAT_ASKS = ("Repeat after me:", "Say back these words:", "Please repeat:")


def word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A made-up pronounceable lowercase word ("tavorin")."""
    n = rng.randint(*syllables)
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n)) + rng.choice(_CODAS)


def value(rng: random.Random) -> str:
    """A value a request carries: a capitalised made-up word or a string of digits."""
    if rng.random() < 0.35:
        return str(rng.randint(10, 99999))
    return word(rng).capitalize()


@dataclasses.dataclass
class Example:
    """One conversation. `messages` is the prompt (Chat Completions dicts), `reply` the assistant message the
    model should write next; `expect` what the evaluation checks ('call': (name, arguments), 'uses': values
    the answer must contain, 'answer': text the final answer must hold); `copies` the copied strings."""

    family: str
    messages: list
    reply: dict
    tools: list | None = None
    reasoning: str = "low"
    expect: dict = dataclasses.field(default_factory=dict)
    copies: list = dataclasses.field(default_factory=list)


def _tool(rng: random.Random, topic: str) -> tuple[dict, list[str]]:
    name = f"{rng.choice(_VERBS)}_{topic}"
    params = [word(rng, (2, 2)) for _ in range(rng.choice((1, 1, 2)))]
    props = {p: {"type": "string"} for p in params}
    description = f"Gets the {topic} for a {' and a '.join(params)}."
    spec = {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": params}}}
    return spec, params


def _toolset(rng: random.Random, n: int) -> tuple[list, list]:
    topics = set()
    while len(topics) < n:
        topics.add(word(rng))
    topics = sorted(topics, key=lambda _: rng.random())
    made = [_tool(rng, t) for t in topics]
    return [spec for spec, _ in made], [(t, spec, params) for t, (spec, params) in zip(topics, made)]


def _request(topic: str, params: list[str], values: list[str]) -> str:
    given = " and ".join(f"{p} {v}" for p, v in zip(params, values))
    return f"What is the {topic} for {given}?"


def _call_plan(topic: str, name: str, params: list[str], values: list[str]) -> str:
    given = ", ".join(f"{p} = {v}" for p, v in zip(params, values))
    return f"The user wants the {topic}. Tool for {topic}: {name}. I will call {name} with {given}."


def sample(rng: random.Random, family: str) -> Example:
    """One conversation of `family` (a key of FAMILIES)."""
    reasoning = rng.choice(harmony.REASONING_EFFORTS)
    if family == "greeting":
        name = word(rng).capitalize() if rng.random() < 0.6 else None
        user = rng.choice(_GREETINGS) + (f" I am {name}." if name else "")
        answer = f"Hello{' ' + name if name else ''}! How can I help you today?"
        analysis = f"The user {name} greets me." if name else "The user greets me."
        return Example(family, [{"role": "user", "content": user}], _final(analysis, answer), None, reasoning,
                       {"answer": answer}, [name] if name else [])
    if family == "repeat":
        words = [word(rng) if rng.random() < 0.75 else str(rng.randint(0, 9999)) for _ in range(rng.randint(2, 5))]
        text = " ".join(words)
        return Example(family, [{"role": "user", "content": f"{rng.choice(_REPEAT_ASKS)} {text}"}],
                       _final("The user wants the words back.", text), None, reasoning, {"answer": text}, words)
    if family in ("arith1", "arith2"):
        lo, hi = (0, 9) if family == "arith1" else (10, 99)
        a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        r = a + b if op == "+" else a - b
        line = f"{a} {op} {b} = {r}."
        return Example(family, [{"role": "user", "content": f"What is {a} {op} {b}?"}], _final(line, line), None,
                       reasoning, {"answer": line, "result": str(r)}, [f"{a} {op} {b}"])
    if family not in ("tool_call", "tool_answer", "no_tool"):
        raise ValueError(f"unknown corpus family {family!r}; families are {sorted(FAMILIES)}")

    tools, entries = _toolset(rng, rng.randint(1, 3))
    if family == "no_tool":
        taken = {t for t, _, _ in entries}
        topic = word(rng)
        while topic in taken:
            topic = word(rng)
        params = [word(rng, (2, 2))]
        values = [value(rng)]
        answer = f"None of my tools gives the {topic}, so I cannot look it up."
        return Example(family, [{"role": "user", "content": _request(topic, params, values)}],
                       _final(f"The user wants the {topic}. Tool for {topic}: none.", answer), tools, reasoning,
                       {"call": None, "answer": answer}, [topic])
    topic, spec, params = rng.choice(entries)
    name = spec["function"]["name"]
    values = [value(rng) for _ in params]
    arguments = dict(zip(params, values))
    user = {"role": "user", "content": _request(topic, params, values)}
    call = {"role": "assistant", "reasoning_content": _call_plan(topic, name, params, values),
            "tool_calls": [{"id": "call_0", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)}}]}
    copies = [topic, name, *params, *values]
    if family == "tool_call":
        return Example(family, [user], call, tools, reasoning, {"call": (name, arguments)}, copies)
    result = value(rng)
    given = " and ".join(f"{p} {v}" for p, v in zip(params, values))
    answer = f"The {topic} for {given} is {result}."
    messages = [user, call, {"role": "tool", "tool_call_id": "call_0", "content": json.dumps({topic: result})}]
    return Example(family, messages, _final(f"The tool says the {topic} is {result}.", answer), tools, reasoning,
                   {"uses": [result], "answer": answer}, [*copies, result])


def _final(analysis: str, answer: str) -> dict:
    return {"role": "assistant", "reasoning_content": analysis, "content": answer}


def pick_family(rng: random.Random) -> str:
    return rng.choices(list(FAMILIES), weights=list(FAMILIES.values()))[0]


def examples(seed: int, n: int, families=None) -> list[Example]:
    """n conversations from `seed`: drawn from the mix, or `n` of each family in `families`, in order."""
    rng = random.Random(f"nano-corpus:{seed}")
    if families is None:
        return [sample(rng, pick_family(rng)) for _ in range(n)]
    return [sample(rng, family) for family in families for _ in range(n)]


def batch_examples(seed: int, step: int, n: int) -> list[Example]:
    """The n conversations of training step `step`: a pure function of (seed, step), so a resumed run sees
    the same data; four steps share one draw sorted by length (less padding)."""
    group = examples(seed * 1_000_003 + step // 4, 4 * n)
    group.sort(key=lambda e: _size(e))
    return group[(step % 4) * n:(step % 4 + 1) * n]


def _size(e: Example) -> int:
    return len(json.dumps(e.messages)) + len(json.dumps(e.tools or [])) + len(json.dumps(e.reply))


def encode(tokenizer, e: Example) -> tuple[list[int], list[int]]:
    """(prompt ids ending with `<|start|>assistant`, the reply's ids): a final answer ends with `<|return|>`,
    a call with `<|call|>`, as the model writes them."""
    prompt = harmony.render(tokenizer, e.messages, tools=e.tools, reasoning=e.reasoning)
    full = harmony.render(tokenizer, e.messages + [e.reply], tools=e.tools, reasoning=e.reasoning)
    start = tokenizer.token_id("<|start|>")
    full = full[:max(i for i, t in enumerate(full) if t == start)]  # less the `<|start|>assistant` render adds
    if full[:len(prompt)] != prompt:
        raise AssertionError("the reply's rendering does not extend the prompt's")
    reply = full[len(prompt):]
    if reply[-1] == tokenizer.token_id("<|end|>"):
        reply[-1] = tokenizer.token_id("<|return|>")
    return prompt, reply
