"""Writes harmony_tools_fuzz.json.xz: random function tools and agent-loop conversations, and the ids that
openai-harmony renders for them. Run offline, where openai-harmony is installed and its vocabulary file is at
hand (it is o200k_base.tiktoken, which ../o200k_harmony/tokenizer.json holds too; `--vocab-from` writes it
from there, and openai-harmony checks its sha256):

    pip install openai-harmony==0.0.8
    python make_harmony_tools_fuzz.py --vocab-from ../o200k_harmony/tokenizer.json.xz --cases 500 --seed 14

The cases avoid where openai-harmony and our renderer are known to differ on purpose (spec.md: analysis of
finished turns), so earlier turns carry no reasoning.
"""
import argparse
import base64
import json
import lzma
import os
import random
import tempfile
from pathlib import Path

WORDS = ["alpha", "city", "x", "é", "名前", "a b", "line\nbreak", 'q"uote', "back\\slash", "", "tab\t", "cr\r\nlf",
         "trail\n", "\r"]
KEYS = ["city", "unit", "count", "opts", "mode", "values", "k_1", "名前", "with space", "tags", "nested"]
DEFAULTS = {"string": ["abc", "", 'q"x', "é"], "number": [1, 1.5, 0, -2.25, 10**12], "integer": [0, 3, -7],
            "boolean": [True, False], "array": [["a", "b"], [], [1, 2]], "object": [{"a": 1}, {}]}


def write_vocab(tokenizer_json_xz: Path, directory: Path) -> None:
    """o200k_base.tiktoken (base64 token bytes and rank per line) from the byte-level BPE's vocabulary."""
    vocab = json.loads(lzma.decompress(tokenizer_json_xz.read_bytes()))["model"]["vocab"]
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, shifted = {}, 0
    for byte in range(256):  # GPT-2's byte-level alphabet: bytes that are not printable move past 255
        if byte in printable:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + shifted)] = byte
            shifted += 1
    lines = (base64.b64encode(bytes(alphabet[c] for c in token)).decode() + f" {rank}\n"
             for token, rank in sorted(vocab.items(), key=lambda kv: kv[1]))
    (directory / "o200k_base.tiktoken").write_text("".join(lines))


class Fuzzer:
    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def schema(self, depth: int = 0) -> dict:
        r = self.r
        kinds = ["string", "number", "integer", "boolean", "array", "object", "list", "oneOf", "none", "null",
                 "anyOf", "ref"] if depth < 3 else ["string", "number", "boolean", "none"]
        kind, s = r.choice(kinds), {}
        if kind == "list":
            s["type"] = r.sample(["string", "integer", "null", "number", "boolean", 3], r.randint(0, 3))
        elif kind in ("oneOf", "anyOf"):
            s[kind] = [self.schema(depth + 1) for _ in range(r.randint(0, 3))]
        elif kind == "ref":
            s["$ref"] = "#/$defs/x"
        elif kind != "none":
            s["type"] = kind
        if kind == "string" and r.random() < 0.4:
            s["enum"] = r.sample(["a", "b", "c d", "é", 1, None], r.randint(0, 4))
        if kind in ("number", "integer") and r.random() < 0.3:
            s["enum"] = [1, 2]
        if kind == "array" and r.random() < 0.8:
            s["items"] = self.schema(depth + 1)
        if kind == "object":
            if r.random() < 0.9:
                s["properties"] = {r.choice(KEYS): self.schema(depth + 1) for _ in range(r.randint(0, 4))}
            names = list(s.get("properties", {})) + ["absent"]
            if r.random() < 0.6:
                s["required"] = r.sample(names, r.randint(0, len(names) - 1))
            if r.random() < 0.2:
                s["additionalProperties"] = False
        for field, p, values in (("description", 0.4, WORDS), ("title", 0.15, WORDS),
                                 ("nullable", 0.15, [True, True, False, "yes"]), ("format", 0.1, ["date"])):
            if r.random() < p:
                s[field] = r.choice(values)
        if r.random() < 0.15:
            s["examples"] = r.sample(["e1", "é", 3, "two words"], r.randint(0, 3))
        if r.random() < 0.25:
            s["default"] = r.choice(DEFAULTS.get(s.get("type") if isinstance(s.get("type"), str) else "", [None, "z"]))
            if s.get("type") == "number" and r.random() < 0.5:  # 17 digits, any exponent: how floats are written
                s["default"] = r.choice([1, -1]) * r.random() * 10.0 ** r.randint(-300, 300)
        return s

    def tools(self) -> list[dict]:
        r, tools = self.r, []
        for i in range(r.randint(1, 3)):
            function = {"name": f"tool_{i}" + r.choice(["", "_x", "-y"])}
            if r.random() < 0.8:
                function["description"] = r.choice(WORDS + ["Two\nlines", "Three\r\nline\ncrlf\n", "x\r"])
            if r.random() < 0.85:
                if r.random() < 0.2:
                    parameters = self.schema(1)
                else:
                    props = {r.choice(KEYS): self.schema(1) for _ in range(r.randint(0, 5))}
                    parameters = {"type": "object", "properties": props,
                                  "required": r.sample(list(props), r.randint(0, len(props)))}
                if r.random() < 0.2:
                    parameters["description"] = r.choice(WORDS)
                function["parameters"] = parameters
            tools.append({"type": "function", "function": function})
        return tools

    def conversation(self, names: list[str]) -> list[dict]:
        r, messages = self.r, []
        if r.random() < 0.5:
            messages.append({"role": r.choice(["system", "developer"]), "content": r.choice(["Be brief.", "", "a\nb"])})
        for _ in range(r.randint(0, 2)):  # finished turns, without reasoning
            messages += [{"role": "user", "content": r.choice(WORDS) or "hi"},
                         {"role": "assistant", "content": r.choice(WORDS) or "ok"}]
        messages.append({"role": "user", "content": "Question?"})
        for _ in range(r.randint(0, 2)):  # the turn in progress: calls, results, reasoning carried back
            calls = [{"id": f"call_{len(messages)}_{k}", "type": "function",
                      "function": {"name": r.choice(names),
                                   "arguments": r.choice(["{}", '{"a":1}', "not json", '{"x": "é"}'])}}
                     for k in range(r.randint(1, 3))]
            message = {"role": "assistant", "content": r.choice([None, "", "Let me check."]), "tool_calls": calls}
            if r.random() < 0.6:
                message[r.choice(["reasoning", "reasoning_content"])] = r.choice(["think", "more\nthink"])
            messages.append(message)
            messages += [{"role": "tool", "tool_call_id": c["id"], "content": r.choice(["42", '{"ok": true}', "é"])}
                         for c in r.sample(calls, len(calls))]
        return messages


def reference_ids(oh, encoding, case: dict) -> list[int]:
    """openai-harmony's rendering of a case, built from its own message types."""
    effort = {"low": oh.ReasoningEffort.LOW, "medium": oh.ReasoningEffort.MEDIUM, "high": oh.ReasoningEffort.HIGH}
    system = oh.SystemContent.new().with_reasoning_effort(effort[case["system"]["reasoning"]])
    if "date" in case["system"]:
        system = system.with_conversation_start_date(case["system"]["date"])
    tools = [oh.ToolDescription.new(t["function"]["name"], t["function"].get("description", ""),
                                    parameters=t["function"].get("parameters")) for t in case["tools"]]
    messages = list(case["messages"])
    developer = oh.DeveloperContent.new()
    if messages[0]["role"] in ("system", "developer"):
        developer = developer.with_instructions(messages.pop(0)["content"])
    out = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
           oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer.with_function_tools(tools))]
    names = {}
    for m in messages:
        if m["role"] == "user":
            out.append(oh.Message.from_role_and_content(oh.Role.USER, m["content"]))
        elif m["role"] == "tool":
            author = oh.Author.new(oh.Role.TOOL, f"functions.{names[m['tool_call_id']]}")
            out.append(oh.Message.from_author_and_content(author, m["content"]).with_recipient("assistant")
                       .with_channel("commentary"))
        elif "tool_calls" not in m:
            out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, m["content"]).with_channel("final"))
        else:
            reasoning = m.get("reasoning", m.get("reasoning_content"))
            if reasoning is not None:
                out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, reasoning).with_channel("analysis"))
            if m["content"]:
                out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, m["content"])
                           .with_channel("commentary"))
            for call in m["tool_calls"]:
                names[call["id"]] = call["function"]["name"]
                out.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, call["function"]["arguments"])
                           .with_channel("commentary").with_recipient(f"functions.{call['function']['name']}")
                           .with_content_type("<|constrain|>json"))
    return encoding.render_conversation_for_completion(oh.Conversation.from_messages(out), oh.Role.ASSISTANT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--vocab-from", type=Path, help="tokenizer.json.xz to write o200k_base.tiktoken from")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("harmony_tools_fuzz.json.xz"))
    args = parser.parse_args()
    if args.vocab_from:
        directory = Path(tempfile.mkdtemp())
        write_vocab(args.vocab_from, directory)
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(directory)
    import openai_harmony as oh

    encoding = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
    fuzzer, cases = Fuzzer(args.seed), []
    for i in range(args.cases):
        tools = fuzzer.tools()
        case = {"name": f"fuzz_{i}",
                "system": {"reasoning": fuzzer.r.choice(["low", "medium", "high"]),
                           **({"date": "2025-12-01"} if fuzzer.r.random() < 0.5 else {})},
                "tools": tools, "messages": fuzzer.conversation([t["function"]["name"] for t in tools])}
        case["ids"] = reference_ids(oh, encoding, case)
        cases.append(case)
    from importlib.metadata import version

    data = {"versions": {"openai-harmony": version("openai-harmony")}, "seed": args.seed, "render": cases}
    args.out.write_bytes(lzma.compress(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(),
                                       preset=9))


if __name__ == "__main__":
    main()
