"""Both sides of every limit, checked where it is enforced: a tool name of 64 characters and of 65, numbers in
tool schemas around 16 integer digits and the 64-bit integer range, JSON nesting at MAX_DEPTH with escaped
backslashes before it, Host headers (unbracketed IPv6 included), a body of exactly max_body_bytes and one byte
more, logit_bias ids at vocab_size - 1 and vocab_size, and the KV budget of a context shorter than the window."""
import asyncio
import json
import random
from types import SimpleNamespace

import pytest

from gpt_oss_triton.model import PRESETS
from gpt_oss_triton.model.budget import memory_budget
from gpt_oss_triton.model.harmony_tools import ToolsError, function_tools, tools_section
from gpt_oss_triton.model.runtime.engine import check_request
from gpt_oss_triton.model.runtime.sampling import SamplingParams
from gpt_oss_triton.model.server.body import MAX_DEPTH, json_depth, parse_json
from gpt_oss_triton.model.server.errors import APIError
from gpt_oss_triton.model.server.security import RequestGuard, host_allowed, host_name


def _tool(name, parameters=None):
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def test_a_tool_name_of_64_characters_is_taken_and_65_is_not():
    for name in ("a" * 64, "A" + "_.:-9" * 12 + "bcd", "x"):
        assert function_tools([_tool(name)])[0].name == name
    for name in ("a" * 65, "", "a b", "a<b"):
        with pytest.raises(ToolsError, match="1 to 64") as e:
            function_tools([_tool(name)])
        assert e.value.param == "tools"


@pytest.mark.parametrize("value, text", [
    (1e15, "1000000000000000.0"),  # 16 integer digits: written out
    (1234567890123456.0, "1234567890123456.0"),
    (1e16, "1e16"),  # 17: exponent form
    (12345678901234567.0, "1.2345678901234568e16"),
    (123456789012345.6, "123456789012345.6"),
    (1234567890123456.8, "1234567890123456.8"),
    (0.0001, "0.0001"), (1e-5, "0.00001"), (1e-6, "1e-6"), (1.5e-7, "1.5e-7"), (-2.5, "-2.5"), (0.0, "0.0"),
    (2 ** 64 - 1, "18446744073709551615"),  # serde_json's u64
    (2 ** 64, "1.8446744073709552e19"),  # past it: a float
    (-(2 ** 63), "-9223372036854775808"),  # serde_json's i64
    (-(2 ** 63) - 1, "-9.223372036854776e18"),
    (7, "7"),
])
def test_numbers_in_tool_schemas_are_written_as_openai_harmony_writes_them(value, text):
    """Rust's layout of a float: written out up to 16 digits before the point, and down to 0.00001."""
    schema = {"type": "object", "properties": {"x": {"type": "number", "default": value}}}
    assert f"x?: number, // default: {text}\n" in tools_section(function_tools([_tool("f", schema)]))


def _depth(value) -> int:
    if isinstance(value, (list, dict)):
        items = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v) for v in items), default=0)
    return 0


def _random_json(rng: random.Random, depth: int):
    """Nested lists and objects whose strings are made of brackets, quotes and backslashes."""
    if depth == 0 or rng.random() < 0.3:
        return "".join(rng.choice('[]{}"\\a') for _ in range(rng.randrange(6)))
    if rng.random() < 0.5:
        return [_random_json(rng, depth - 1) for _ in range(rng.randrange(1, 4))]
    return {_random_json(rng, 0): _random_json(rng, depth - 1) for _ in range(rng.randrange(1, 4))}


def test_json_depth_skips_strings_with_escaped_backslashes_and_quotes():
    for text, depth in [(r'["\\", [[]]]', 3), (r'["\\\\", [[]]]', 3), (r'["\\\"", [[]]]', 3), (r'["\"]]", []]', 2),
                        (r'{"\\": {"a\\": ["]"]}}', 3), (r'"\\"', 0), (r'["\\\\\\", {}]', 2)]:
        assert json_depth(text.encode()) == depth == _depth(json.loads(text)), text
    rng = random.Random(0)
    for _ in range(300):
        value = _random_json(rng, 6)
        assert json_depth(json.dumps(value).encode()) == _depth(value), value


def test_json_nesting_at_the_limit_after_an_escaped_backslash():
    def nested(depth: int) -> bytes:  # a string that ends in an escaped backslash, then the nesting
        return ('["\\\\", ' + "[" * (depth - 1) + "]" * (depth - 1) + "]").encode()

    assert parse_json(nested(MAX_DEPTH))[0] == "\\"  # taken
    for body in (nested(MAX_DEPTH + 1), b'["\\\\", ' + b"[" * 100_000):
        with pytest.raises(APIError, match="deeper than") as e:
            parse_json(body)
        assert e.value.status == 400


@pytest.mark.parametrize("host, allowed", [
    ("::1", True), ("fe80::1", True), ("2001:db8::8a2e:370:7334", True), ("::ffff:127.0.0.1", True),
    ("[::1]", True), ("[::1]:8000", True), ("[2001:db8::1]:443", True), ("127.0.0.1:8000", True),
    ("[::1", False), ("[evil.example]", False), ("evillocalhost", False), ("localhost.evil.example", False),
    ("a.localhost:1", True), ("localhost", True), ("evil.example.", False)])
def test_host_names_ipv6_unbracketed_and_bracketed(host, allowed):
    assert host_allowed(host, frozenset()) is allowed
    assert host_allowed(host, frozenset({"*"}))


def test_host_name_strips_only_a_port():
    assert [host_name(h) for h in ("::1", "fe80::1", "[fe80::1]:80", "Example.COM.:8080", "x:y")] == \
        ["::1", "fe80::1", "fe80::1", "example.com", "x:y"]


LIMIT = 1000


def _guarded_post(size: int, *, content_length: bool, pieces: int = 1) -> tuple[int, int]:
    """(status, body bytes the app saw) of a POST of `size` bytes through RequestGuard(limit LIMIT), its body
    in `pieces` messages; with content_length, the header says the size."""
    seen = []

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(len(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    body = b" " * size
    step = -(-size // pieces) or 1
    chunks = [body[i:i + step] for i in range(0, size, step)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    if content_length:
        headers.append((b"content-length", str(size).encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    async def run():
        await RequestGuard(app, max_body_bytes=LIMIT, read_timeout=30)(scope, receive, send)

    try:
        asyncio.run(run())
    except APIError as e:  # the app's handlers turn it into the response
        return e.status, sum(seen)
    return sent[0]["status"], sum(seen)


@pytest.mark.parametrize("content_length", [True, False])
@pytest.mark.parametrize("pieces", [1, 3])
def test_a_body_of_exactly_max_body_bytes_passes_and_one_more_byte_is_a_413(content_length, pieces):
    assert _guarded_post(LIMIT, content_length=content_length, pieces=pieces) == (200, LIMIT)
    assert _guarded_post(LIMIT - 1, content_length=content_length, pieces=pieces) == (200, LIMIT - 1)
    assert _guarded_post(LIMIT + 1, content_length=content_length, pieces=pieces) == (413, 0)


def test_the_content_length_alone_refuses_one_byte_over():
    """Refused at once, before any of the body is read (the app never runs)."""
    async def receive():
        raise AssertionError("the body was read")

    sent = []

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("the app ran")

    for size, refused in ((LIMIT, False), (LIMIT + 1, True)):
        scope = {"type": "http", "method": "POST", "path": "/", "headers": [
            (b"host", b"localhost"), (b"content-type", b"application/json"), (b"content-length", str(size).encode())]}
        error = RequestGuard(app, max_body_bytes=LIMIT, read_timeout=30)._refusal(scope)
        assert (error is not None and error.status == 413) is refused, size


def test_logit_bias_ids_up_to_vocab_size_minus_one():
    config = SimpleNamespace(vocab_size=100, max_context=64)
    check_request(config, 64, [0, 99], SamplingParams(max_new_tokens=62))  # prompt ids too; 64 tokens in all
    for prompt, params in (([0, 100], SamplingParams(max_new_tokens=4)), ([-1], SamplingParams(max_new_tokens=4))):
        with pytest.raises(ValueError, match=r"prompt holds token ids outside the vocabulary \[0, 100\)"):
            check_request(config, 64, prompt, params)
    with pytest.raises(ValueError, match="exceeds the model's context of 64 tokens"):
        check_request(config, 64, [0, 99], SamplingParams(max_new_tokens=63))
    for token in (0, 99):
        check_request(config, 64, [1, 2], SamplingParams(max_new_tokens=4, logit_bias={token: 5.0}))
    for token in (100, 101):
        with pytest.raises(ValueError, match=r"logit_bias names token ids outside the vocabulary \[0, 100\)"):
            check_request(config, 64, [1, 2], SamplingParams(max_new_tokens=4, logit_bias={token: 5.0}))
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={-1: 1.0})
    for bias in (-100.0, 100.0):
        assert SamplingParams(logit_bias={0: bias}).logit_bias == ((0, bias),)
    for bias in (-100.01, 100.01):
        with pytest.raises(ValueError, match="logit_bias"):
            SamplingParams(logit_bias={0: bias})


def _kv_bytes(config, batch: int, context: int) -> int:
    """k and v for every position a layer keeps: all of them, or the last sliding_window on sliding layers."""
    row = 2 * config.num_key_value_heads * config.head_dim * 2
    return batch * row * sum(min(context, config.sliding_window) if config.is_sliding(i) else context
                             for i in range(config.num_hidden_layers))


@pytest.mark.parametrize("context", [1, 5, 127, 128, 129, 1000])
def test_kv_budget_around_the_sliding_window(context):
    config = PRESETS["gpt-oss-20b"]
    assert config.sliding_window == 128
    assert memory_budget(config, 3, context).kv_cache == _kv_bytes(config, 3, context)
