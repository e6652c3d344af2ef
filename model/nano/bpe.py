"""The nano tokenizer: a byte-level BPE trained on the corpus, with harmony's special tokens after it.

The pre-tokenizer isolates every whitespace character and punctuation mark and splits digits one by one,
so a value is the same ids in prose (`for city Lisbon`), in JSON (`"Lisbon"`) and after `= `: a copy is a
plain token-for-token copy. Merges then only join letters within a word. The specials come after the
learnt vocabulary in o200k_harmony's order, as `Tokenizer.byte_level()` places them after the bytes.
"""
from __future__ import annotations

import re

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from ..tokenizer import HARMONY_SPECIAL_TOKENS, Tokenizer
from . import corpus

_SPECIAL = re.compile("|".join(re.escape(t) for t in HARMONY_SPECIAL_TOKENS))


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(r"\s"), behavior="isolated"),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def corpus_texts(seed: int, n: int) -> list[str]:
    """The text of n corpus conversations (prompt and reply), special tokens left out."""
    byte_level = Tokenizer.byte_level()
    texts = []
    for e in corpus.examples(seed, n):
        prompt, reply = corpus.encode(byte_level, e)
        texts.append(_SPECIAL.sub("\n", byte_level.decode(prompt + reply)))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 1024) -> Tokenizer:
    """A BPE of `vocab_size` regular ids (the 256 bytes included) learnt from `texts`, then the specials."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens(list(HARMONY_SPECIAL_TOKENS))
    return Tokenizer(tokenizer)
