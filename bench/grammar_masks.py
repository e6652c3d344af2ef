"""Host time per decode step of structured outputs' masks (GrammarConstraint.fill_masks, llguidance) at
batch 1, 8 and 64: each row walks a different valid reply to a JSON Schema (an analysis message, then the JSON),
so the time covers free reasoning, the harmony headers and the JSON alike. The CPU only: on a GPU this work
overlaps the step's forward, and it is what a constrained step adds when it takes longer than that.

    python bench/grammar_masks.py --tokenizer tests/data/o200k_harmony/tokenizer.json   # or none: byte-level
"""
import argparse
import json
import random
import time

import torch

from gpt_oss_triton.model import Tokenizer
from gpt_oss_triton.model.runtime.grammar import GrammarConstraint, json_schema_grammar, reply_grammar

SCHEMA = {"type": "object", "additionalProperties": False,
          "required": ["name", "age", "role", "tags", "address", "score"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                         "role": {"enum": ["admin", "user", "guest"]},
                         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
                         "address": {"type": "object", "additionalProperties": False, "required": ["city", "zip"],
                                     "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}},
                         "score": {"type": "number"}}}
WORDS = "alpha beta gamma delta Zürich Paris New York hello world data token".split()


def reply(rng: random.Random) -> str:
    doc = {"name": " ".join(rng.choices(WORDS, k=rng.randint(1, 6))), "age": rng.randint(0, 99),
           "role": rng.choice(["admin", "user", "guest"]), "tags": rng.choices(WORDS, k=rng.randint(0, 5)),
           "address": {"city": rng.choice(WORDS), "zip": str(rng.randint(10000, 99999))},
           "score": round(rng.random() * 100, 3)}
    thought = " ".join(rng.choices(WORDS, k=rng.randint(5, 30)))
    return (f"<|channel|>analysis<|message|>{thought}<|end|><|start|>assistant<|channel|>final<|message|>"
            f"{json.dumps(doc, ensure_ascii=False)}<|return|>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the built-in byte-level one)")
    parser.add_argument("--vocab", type=int, default=None, help="mask width (default: 201088 with a tokenizer file)")
    args = parser.parse_args()
    tok = Tokenizer.from_file(args.tokenizer) if args.tokenizer else Tokenizer.byte_level()
    vocab = args.vocab or (201088 if args.tokenizer else 512)
    lark = reply_grammar(tok, final=json_schema_grammar(SCHEMA))
    t0 = time.perf_counter()
    GrammarConstraint(tok, lark, vocab)
    print(f"tokenizer view and first grammar: {time.perf_counter() - t0:.2f} s")
    rng = random.Random(0)
    for batch in (1, 8, 64):
        rows = [tok.encode(reply(rng)) for _ in range(batch)]
        t0 = time.perf_counter()
        constraints = [GrammarConstraint(tok, lark, vocab) for _ in rows]
        compile_s = (time.perf_counter() - t0) / batch
        bits = torch.zeros(batch, (vocab + 31) // 32, dtype=torch.int32)
        steps, spent = min(len(r) for r in rows), 0.0
        for i in range(steps):
            t0 = time.perf_counter()
            GrammarConstraint.fill_masks([(c, b) for b, c in enumerate(constraints)], bits)
            spent += time.perf_counter() - t0
            for c, r in zip(constraints, rows):
                c.advance(r[i])
        print(f"batch {batch:3d}: {spent / steps * 1e3:7.2f} ms per step ({spent / steps / batch * 1e6:6.1f} us per "
              f"row), {compile_s * 1e3:.1f} ms per request to compile, over {steps} steps")


if __name__ == "__main__":
    main()
