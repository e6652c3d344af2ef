"""Tokenizer: o200k_harmony (or a tiny byte-level stand-in) behind one small interface.

gpt-oss uses o200k_harmony, a byte-level BPE shipped as a Hugging Face `tokenizer.json`; `Tokenizer` wraps the
`tokenizers` library for it. `Tokenizer.byte_level()` builds a 277-id tokenizer in code (ids 0..255 are the
bytes, then the same special tokens in the same order) so the tiny test models and CI need no 27 MB file.
`StreamDecoder` turns ids into text one at a time for streaming, holding back a character whose bytes are
split across tokens.
"""
from __future__ import annotations

import codecs
import functools
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

# The specials of o200k_harmony's tokenizer.json (ids 199998..200018), in its order.
HARMONY_SPECIAL_TOKENS = (
    "<|startoftext|>", "<|endoftext|>", "<|reserved_200000|>", "<|reserved_200001|>", "<|return|>",
    "<|constrain|>", "<|reserved_200004|>", "<|channel|>", "<|start|>", "<|end|>", "<|message|>",
    "<|reserved_200009|>", "<|reserved_200010|>", "<|reserved_200011|>", "<|call|>", "<|reserved_200013|>",
    "<|reserved_200014|>", "<|reserved_200015|>", "<|reserved_200016|>", "<|reserved_200017|>",
    "<|endofprompt|>",
)


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte-level alphabet, indexed by byte: printable bytes stand for themselves, the rest move past 255."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


_BYTE_CHARS = _byte_level_alphabet()
_CHAR_TO_BYTE = {char: byte for byte, char in enumerate(_BYTE_CHARS)}


class Tokenizer:
    """A byte-level BPE tokenizer (`tokenizers.Tokenizer`) with special tokens looked up by their text."""

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        if not isinstance(tokenizer.decoder, decoders.ByteLevel):
            # token_bytes() and so streaming rely on the byte-level alphabet.
            raise ValueError(f"expected a byte-level BPE tokenizer, but its decoder is {tokenizer.decoder!r}")
        self._tokenizer = tokenizer
        self._specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        # encode(specials=False) flips a flag on the shared Rust tokenizer; the lock keeps threads apart.
        self._lock = threading.Lock()
        self._by_bytes: dict[bytes, int] | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Loads a Hugging Face `tokenizer.json`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        try:
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise ValueError(f"cannot load tokenizer {path}: {e}") from e

    @classmethod
    def byte_level(cls) -> Tokenizer:
        """A tiny tokenizer for tests: id b is byte b, then the harmony specials at 256.. (277 ids in all)."""
        bpe = models.BPE(vocab={char: byte for byte, char in enumerate(_BYTE_CHARS)}, merges=[])
        tokenizer = tokenizers.Tokenizer(bpe)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens(list(HARMONY_SPECIAL_TOKENS))
        return cls(tokenizer)

    def save(self, path: str | os.PathLike) -> None:
        """Writes a `tokenizer.json` that `from_file` reads back."""
        self._tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The most bytes one token stands for (a special token: its text's), so a text of n UTF-8 bytes has
        at least n / max_token_bytes tokens. Found once, from the vocabulary (0.2 s for o200k)."""
        vocab = self._tokenizer.get_vocab(with_added_tokens=False)
        if set("".join(vocab)) <= _CHAR_TO_BYTE.keys():  # all in the byte-level alphabet: a character per byte
            regular = max(map(len, vocab), default=0)
        else:
            regular = max(len(self.token_bytes(i)) for i in vocab.values())
        added = max((len(t.content.encode()) for t in self._tokenizer.get_added_tokens_decoder().values()), default=0)
        return max(regular, added)

    def encode(self, text: str, *, specials: bool = True) -> list[int]:
        """Ids of `text`, nothing added. Special tokens written in it ("<|start|>") become their ids unless
        `specials` is False, which encodes them as plain text (harmony does so for message content)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        with self._lock:
            self._tokenizer.encode_special_tokens = not specials
            try:
                # encode_batch releases the GIL (encode holds it), so other threads run meanwhile: the
                # server tokenises long prompts on a thread pool while its event loop goes on.
                return self._tokenizer.encode_batch([text], add_special_tokens=False)[0].ids
            finally:
                self._tokenizer.encode_special_tokens = False

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens written out; bytes that are not valid UTF-8 become U+FFFD."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, name: str) -> int:
        """Id of the special token written `name`, e.g. "<|return|>"."""
        try:
            return self._specials[name]
        except KeyError:
            raise ValueError(f"the tokenizer has no special token {name!r}") from None

    def backend_json(self) -> str:
        """The `tokenizers` tokenizer as tokenizer.json text (what other libraries load it from)."""
        return self._tokenizer.to_str()

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special tokens (`<|start|>`, `<|end|>`, ...)."""
        return frozenset(self._specials.values())

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token; ids the tokenizer lacks (spare embedding rows) give b"" as in decode()."""
        token = self._tokenizer.id_to_token(int(token_id))
        if token is None:
            return b""
        try:
            return bytes(_CHAR_TO_BYTE[char] for char in token)
        except KeyError:  # same fallback as the ByteLevel decoder: a token outside the alphabet is its UTF-8
            return token.encode()

    def id_of_bytes(self, data: bytes) -> int | None:
        """The id of the regular (not special) token whose bytes are `data`, or None; the map of every token's
        bytes is built on first use (about a second for o200k)."""
        if self._by_bytes is None:
            specials = set(self._specials.values())
            self._by_bytes = {self.token_bytes(i): i for i in range(self.vocab_size) if i not in specials}
        return self._by_bytes.get(data)


class StreamDecoder:
    """Turns ids fed one at a time into text; the pieces joined equal `tokenizer.decode(all ids)`.

    A byte-level token can end inside a multi-byte character: those bytes wait for the next token.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """The text that `token_id` completes (may be empty)."""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """The end of the stream: bytes still held back come out as U+FFFD."""
        return self._utf8.decode(b"", final=True)
