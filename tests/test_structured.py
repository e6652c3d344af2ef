"""Structured outputs by constrained decoding (model/runtime/grammar.py): the random-weight tiny model's replies
under a JSON Schema parse and validate on every seed; the analysis channel stays free and the harmony tokens
that end the final message are allowed exactly when the JSON is complete, with the byte-level and the real
o200k tokenizer."""
import json

import jsonschema
import pytest
import torch

from gpt_oss_triton.model import GptOss, harmony
from gpt_oss_triton.model.runtime.engine import Engine
from gpt_oss_triton.model.runtime.grammar import (GrammarConstraint, json_schema_grammar, json_text_grammar,
                                                  reply_grammar)
from gpt_oss_triton.model.runtime.sampling import SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "owner": {"type": "object", "additionalProperties": False, "required": ["first", "verified"],
                  "properties": {"first": {"type": "string", "maxLength": 4}, "verified": {"type": "boolean"},
                                 "pets": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}}},
        "scores": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
        "note": {"type": ["string", "null"], "maxLength": 4},
    },
    "required": ["name", "kind", "age", "owner", "scores"],
    "additionalProperties": False,
}
SEEDS = 20
VALID = '{"name":"Rex","kind":"dog","age":3,"owner":{"first":"Ann","verified":true},"scores":[1.5]}'


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 shared cores: one thread beats a spinning pool
    yield GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
    torch.set_num_threads(threads)


def _replies(model, schema, seeds, max_new_tokens, budget=8):
    tok = model.tokenizer
    prompt = harmony.render(tok, [{"role": "user", "content": "A pet, as JSON."}])
    engine = Engine(model, max_batch=len(seeds), max_len=len(prompt) + max_new_tokens)
    grammar = reply_grammar(tok, final=json_schema_grammar(schema))
    reqs = [engine.submit(prompt, SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=s),
                          harmony.stop_tokens_for_assistant_actions(tok),
                          constraint=GrammarConstraint(tok, grammar, model.config.vocab_size, reasoning_budget=budget))
            for s in seeds]
    engine.run()
    return [(r, harmony.parse(tok, r.tokens)) for r in reqs]


def test_json_schema_replies_validate_on_every_seed(model):
    for req, messages in _replies(model, SCHEMA, range(SEEDS), max_new_tokens=400):
        assert req.stats.stopped_by == "stop" and req.tokens[-1] == model.tokenizer.token_id("<|return|>")
        final = [m for m in messages if m.get("channel") == "final"]
        assert len(final) == 1 and messages[-1] is final[0], messages
        jsonschema.validate(json.loads(final[0]["content"]), SCHEMA)
        assert not req.constraint.error


def _walk(tok, grammar, vocab, text):
    """Feeds the ids of `text` to a constraint; returns, per id, (allowed ids before it, the constraint)."""
    c = GrammarConstraint(tok, grammar, vocab)
    seen = []
    for t in tok.encode(text):
        allowed = c.allowed_tokens()
        assert allowed[t], f"{tok.decode([t])!r} refused after {tok.decode([s for s, _ in seen])!r}"
        seen.append((t, allowed))
        c.advance(t)
    return seen, c


@pytest.mark.parametrize("tokenizer", ["byte_level", "o200k"], indirect=True)
def test_analysis_is_free_and_the_reply_ends_exactly_when_the_json_does(tokenizer):
    tok, vocab = tokenizer, tokenizer.vocab_size + 40  # models have spare ids past the tokenizer's
    ends = {tok.token_id("<|return|>"), tok.token_id("<|end|>")}
    ordinary = torch.ones(vocab, dtype=torch.bool)
    ordinary[sorted(tok.special_ids)] = False
    ordinary[tok.vocab_size:] = False
    text = (f"<|channel|>analysis<|message|>Think: {{not json}}, no: text.<|end|><|start|>assistant"
            f"<|channel|>final<|message|>{VALID}<|return|>")
    seen, c = _walk(tok, reply_grammar(tok, final=json_schema_grammar(SCHEMA)), vocab, text)
    ids = [t for t, _ in seen]
    body = ids.index(tok.token_id("<|message|>")) + 1
    for t, allowed in seen[body:ids.index(tok.token_id("<|end|>"))]:  # reasoning: any ordinary id, or its end
        assert torch.equal(allowed & ordinary, ordinary) and allowed[tok.token_id("<|end|>")]
    final = len(ids) - 1 - ids[::-1].index(tok.token_id("<|message|>")) + 1
    for t, allowed in seen[final:-1]:  # the JSON: no special token until it is complete
        assert not allowed[sorted(tok.special_ids)].any()
    assert set(seen[-1][1].nonzero().flatten().tolist()) == ends  # complete: <|return|> or <|end|>, nothing else
    assert c.matcher.is_stopped() and not c.error


@pytest.mark.parametrize("channels", [("analysis",), ("commentary",), ("analysis", "commentary")])
def test_reasoning_budget_ends_the_notes(byte_level, channels):
    """The budget counts every note before the answer, analysis and commentary preambles alike, over all of them:
    a model that writes preambles forever must still reach its JSON."""
    tok = byte_level
    c = GrammarConstraint(tok, reply_grammar(tok, final=json_schema_grammar(SCHEMA)), 300, reasoning_budget=5)
    text = "<|end|><|start|>assistant".join(f"<|channel|>{ch}<|message|>" + "ab" for ch in channels)
    for t in tok.encode(text + "cd"[:4 - 2 * len(channels)]):
        c.advance(t)
    assert c.forced is None and c.allowed_tokens()[ord("e")]
    c.advance(ord("e"))
    assert c.allowed_tokens().nonzero().flatten().tolist() == [tok.token_id("<|end|>")]
    for t in tok.encode("<|end|><|start|>assistant<|channel|>final<|message|>"):
        c.advance(t)
    assert c.forced is None and c.allowed_tokens()[ord("{")] and not c.error


def test_json_object_takes_any_object_and_ends_with_it(byte_level):
    value = '{"a": [1, {"b": null}], "c": "x\\"y", "d": {"e": -2.5e3}}'
    grammar = reply_grammar(byte_level, final=json_schema_grammar(None))
    seen, c = _walk(byte_level, grammar, 300, f"<|channel|>final<|message|>{value}<|return|>")
    assert set(seen[-1][1].nonzero().flatten().tolist()) == {byte_level.token_id(t) for t in ("<|return|>", "<|end|>")}
    for text in ("[1]", '"x"', "{a: 1}"):  # not an object, or no JSON
        with pytest.raises(AssertionError, match="refused"):
            _walk(byte_level, grammar, 300, f"<|channel|>final<|message|>{text}<|return|>")


def test_text_completion_grammar(byte_level):
    seen, c = _walk(byte_level, json_text_grammar(json_schema_grammar(SCHEMA)), 300, VALID + "<|endoftext|>")
    assert seen[-1][1].nonzero().flatten().tolist() == [byte_level.token_id("<|endoftext|>")]


@pytest.mark.parametrize("schema, problem", [({"type": "strin"}, "Invalid type"),
                                             ({"type": "string", "format": "no-such-format"}, "Unknown format"),
                                             ([1, 2], "must be an object")])
def test_bad_schemas_name_the_problem(byte_level, schema, problem):
    with pytest.raises(ValueError, match=problem):
        GrammarConstraint(byte_level, reply_grammar(byte_level, final=json_schema_grammar(schema)), 300)
    if isinstance(schema, dict) and "format" in schema:  # not strict: unsupported formats are ignored
        GrammarConstraint(byte_level, reply_grammar(byte_level, final=json_schema_grammar(schema, strict=False)), 300)
