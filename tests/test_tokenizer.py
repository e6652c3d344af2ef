"""Tokenizer: o200k_harmony from the vendored tokenizer.json, the byte-level stand-in, streaming detokenization."""
import random
import re

import pytest
import tokenizers
from tokenizers import decoders, models

from gpt_oss_triton.model.tokenizer import HARMONY_SPECIAL_TOKENS, StreamDecoder, Tokenizer

TEXTS = [
    "Hello, world!",
    "",
    "héllo wörld, ça va?",
    "emoji 😀👍🏽🇫🇷 and CJK 你好，世界 and 日本語のテキスト",
    "tabs\tand\nnewlines\r\n   spaces  ",
    "\x00\x01\x7f control bytes",
    "\ufffd is a real replacement character, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 is astral",
    "specials inline: <|start|>user<|message|>hi<|end|><|return|>",
    "almost special: <|start| <|nope|> |>",
]


def stream(tokenizer, ids):
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.feed(i) for i in ids]
    return pieces + [decoder.flush()]


def test_o200k_special_tokens_are_the_specs(o200k):
    assert o200k.vocab_size == 200019
    assert [o200k.token_id(name) for name in HARMONY_SPECIAL_TOKENS] == list(range(199998, 200019))
    assert {name: o200k.token_id(name) for name in ("<|return|>", "<|start|>", "<|end|>", "<|call|>")} == {
        "<|return|>": 200002, "<|start|>": 200006, "<|end|>": 200007, "<|call|>": 200012}


def test_o200k_encode_turns_written_specials_into_ids(o200k):
    assert o200k.encode("<|start|>user<|message|>hi") == [200006, 1428, 200008, 3686]
    assert o200k.encode("<|start|>assistant") == [200006, 173781]  # no BOS or anything else added


def test_encode_without_specials_keeps_them_text(tokenizer):
    text = "<|start|>user<|message|>hi<|end|>"
    plain = tokenizer.encode(text, specials=False)
    assert not set(plain) & {tokenizer.token_id(name) for name in HARMONY_SPECIAL_TOKENS}
    assert tokenizer.decode(plain) == text
    assert tokenizer.encode(text) != plain  # and the default is back to recognizing them


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode(text, specials=False)) == text


def test_byte_level_layout(byte_level):
    assert byte_level.vocab_size == 256 + len(HARMONY_SPECIAL_TOKENS) == 277 <= 512
    assert [byte_level.token_bytes(i) for i in range(256)] == [bytes([b]) for b in range(256)]
    assert byte_level.encode("aé😀") == list("aé😀".encode())
    assert [byte_level.token_id(name) for name in HARMONY_SPECIAL_TOKENS] == list(range(256, 277))
    assert byte_level.encode("x<|call|>") == [ord("x"), 270]


def test_ids_past_the_tokenizer_decode_to_nothing(byte_level):
    # The tiny models have 512 embedding rows for 277 ids, so sampling can produce them.
    assert byte_level.token_bytes(400) == b""
    assert byte_level.decode([65, 400, 66]) == "AB"
    assert "".join(stream(byte_level, [65, 400, 66])) == "AB"


@pytest.mark.parametrize("text", TEXTS)
def test_stream_decoder_reassembles_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    pieces = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces) or "\ufffd" in text  # split characters were held back


def test_stream_decoder_holds_back_split_characters(byte_level):
    assert stream(byte_level, list("😀".encode())) == ["", "", "", "😀", ""]
    assert stream(byte_level, list("é".encode())[:1]) == ["", "\ufffd"]  # cut short: flushed as U+FFFD


def test_stream_decoder_matches_decode_on_invalid_utf8(byte_level):
    # Random bytes and specials: stray continuation bytes, truncated and overlong sequences, surrogates.
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.choice([rng.randrange(128, 256), rng.randrange(277), 0xED, 0xF0, 0x80]) for _ in range(12)]
        assert "".join(stream(byte_level, ids)) == byte_level.decode(ids), ids


def test_token_id_names_a_missing_token(byte_level):
    with pytest.raises(ValueError, match=r"no special token '<\|refusal\|>'"):
        byte_level.token_id("<|refusal|>")
    with pytest.raises(ValueError, match="no special token 'a'"):  # ordinary tokens are not specials
        byte_level.token_id("a")


def test_encode_rejects_non_text(byte_level):
    with pytest.raises(TypeError, match="takes a str, got list"):
        byte_level.encode([1, 2])


def test_from_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match=re.escape(f"tokenizer file {missing} does not exist")):
        Tokenizer.from_file(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(ValueError, match=re.escape(f"cannot load tokenizer {bad}")):
        Tokenizer.from_file(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_file(tmp_path)  # a folder, not a file


def test_only_byte_level_tokenizers(tmp_path):
    word_level = tokenizers.Tokenizer(models.WordLevel({"a": 0}, unk_token="a"))
    word_level.decoder = decoders.WordPiece()
    with pytest.raises(ValueError, match="expected a byte-level BPE tokenizer"):
        Tokenizer(word_level)
    path = tmp_path / "tokenizer.json"
    word_level.save(str(path))
    with pytest.raises(ValueError, match=re.escape(f"cannot load tokenizer {path}: expected a byte-level")):
        Tokenizer.from_file(path)


def test_max_token_bytes_is_the_longest_token(tokenizer):
    # token_bytes of a special token is its text: the bound covers prompts that spell specials out.
    assert tokenizer.max_token_bytes == max(len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size))
