"""Requests that once got a 500, a reply that broke its schema, or were taken where a 400 fits, each checked on
the loopback under the production uvicorn setup (`serving.server`) with a ScriptedModel: every one is now a 4xx
OpenAI error object naming the field, or (tool_choice "required") the reply it should have been."""
import json

import httpx
import pytest

from gpt_oss_triton.model import Tokenizer, harmony
from gpt_oss_triton.model.harmony_tools import ToolsError, function_tools
from gpt_oss_triton.model.server import security
from gpt_oss_triton.model.server.app import create_app
from scripted_model import ScriptedModel
from test_server import TIMEOUT
from test_server_hardening import running

JSON = {"Content-Type": "application/json"}
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "q"}], "max_tokens": 40, "temperature": 0}
COMPLETION = {"model": "scripted", "prompt": "q", "max_tokens": 2}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
LOOP = {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}  # no JSON value is one
ARGS = '{"city": "Paris"}<|call|>'


def script(context: str) -> str:
    if context.endswith("<|message|>") and "to=functions." in context.rsplit("<|start|>", 1)[-1]:
        return ARGS  # a call's header, forced or not: its arguments
    return "<|channel|>final<|message|>Hello there!<|return|>"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def app(tok):
    return create_app(ScriptedModel.from_text(tok, script), tok, model_name="scripted", max_batch=4, max_len=4000,
                      docs=True)


@pytest.fixture(scope="module")
def url(app):
    with running(app) as (base, _):
        yield base


def _error(response: httpx.Response, status: int, param) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error"), error
    return error["message"]


def _tool(parameters=None, name="f", **function):
    return {"type": "function", "function": {"name": name, **function,
                                             **({} if parameters is None else {"parameters": parameters})}}


def _post(url, path: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}{path}", content=content, headers=JSON, timeout=TIMEOUT)


# 500s that are 400s naming the field.

def test_tool_schema_numbers_past_a_double_are_400s(url):
    infinite = (b'{"model": "scripted", "messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", '
                b'"function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "number", '
                b'"default": 1e400}}}}}]}')
    assert _error(_post(url, "/v1/chat/completions", infinite), 400, "tools").startswith(
        "tools[0].function.parameters.properties.x.default: inf is out of a 64-bit float's range")
    digits = {**CHAT, "tools": [_tool({"type": "object", "properties": {"x": {"type": "integer", "default": 10**400}}})]}
    assert "default: an integer of 401 digits" in _error(_post(url, "/v1/chat/completions", digits), 400, "tools")
    # The same through the Responses API, and the limits themselves: a double's largest values render.
    wide = {"type": "object", "properties": {"x": {"type": "integer", "default": -10**400}}}
    _error(_post(url, "/v1/responses", {"model": "scripted", "input": "q", "tools": [
        {"type": "function", "name": "f", "parameters": wide}]}), 400, "tools")
    for edge in (1.7976931348623157e308, int(1.7976931348623157e308), -5e-324):
        function_tools([_tool({"type": "number", "enum": [edge]})])
    with pytest.raises(ToolsError, match=r"parameters.enum\[1\]: an integer of 309 digits"):
        function_tools([_tool({"type": "number", "enum": [1, 2**1024]})])


@pytest.mark.parametrize("content, where", [
    ([1, 2], r"input[0].content[0] must be an object with a string 'text'"),
    ([{"type": "reasoning_text", "text": 5}], "input[0].content[0] must be an object with a string 'text'"),
    ("I thought", "input[0].content must be a list of"),
    ({"text": "x"}, "input[0].content must be a list of"),
])
def test_responses_reasoning_items_hold_text_parts(url, content, where):
    body = {"model": "scripted", "input": [{"type": "reasoning", "content": content},
                                           {"role": "user", "content": "q"}], "max_output_tokens": 5}
    assert _error(_post(url, "/v1/responses", body), 400, "input").startswith(where)
    body["input"][0] = {"type": "reasoning", "summary": [{"type": "summary_text", "text": None}]}
    assert _error(_post(url, "/v1/responses", body), 400, "input").startswith("input[0].summary[0]")
    body["input"][0] = {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "ok"}], "summary": []}
    assert _post(url, "/v1/responses", body).status_code == 200


def test_a_500_says_the_connection_closes(tok, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("unexpected")

    app = create_app(ScriptedModel.from_text(tok, script), tok, model_name="scripted", max_batch=1, max_len=4000)
    with running(app) as (base, _), httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(f"{base}/v1/models").headers.get("connection") != "close"  # keep-alive otherwise
        monkeypatch.setattr(harmony, "render", boom)
        failed = client.post(f"{base}/v1/chat/completions", json=CHAT)
        assert failed.status_code == 500 and failed.headers["connection"] == "close"
        monkeypatch.undo()
        assert client.post(f"{base}/v1/chat/completions", json=CHAT).status_code == 200  # on a new connection


# Structured outputs no reply can meet: a 400 before the request runs, not content that is not JSON.

def _format(schema, strict=True):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": strict}}


@pytest.mark.parametrize("path, change, param", [
    ("/v1/chat/completions", {"response_format": _format(LOOP)}, "response_format"),
    ("/v1/chat/completions", {"response_format": _format(LOOP, strict=False)}, "response_format"),
    ("/v1/chat/completions", {"tools": [_tool(LOOP, strict=True)]}, "tools"),
    ("/v1/chat/completions", {"tools": [_tool(LOOP, strict=True)], "tool_choice": "required"}, "tools"),
    ("/v1/chat/completions", {"response_format": _format({"type": "object", "properties": {"k": {"$ref": "#/$defs/a"}},
                                                          "required": ["k"], "$defs": LOOP["$defs"]})},
     "response_format"),
    # Unproductive recursion: every value holds another, so none is finite.
    ("/v1/chat/completions", {"response_format": _format({"type": "object", "properties": {"x": {"$ref": "#"}},
                                                          "required": ["x"]})}, "response_format"),
    ("/v1/responses", {"text": {"format": {"type": "json_schema", "name": "x", "schema": LOOP, "strict": True}}},
     "text"),
    ("/v1/responses", {"tools": [{"type": "function", "name": "f", "parameters": LOOP}]}, "tools"),  # strict: default
    ("/v1/completions", {"response_format": _format(LOOP)}, "response_format"),
])
def test_a_schema_no_value_meets_is_a_400(url, path, change, param):
    body = {**CHAT, **change} if path == "/v1/chat/completions" else \
        {**(COMPLETION if path == "/v1/completions" else {"model": "scripted", "input": "q"}), **change}
    assert "cannot be met: " in _error(_post(url, path, body), 400, param)


def _pattern_chat(url, pattern: str, max_tokens: int) -> httpx.Response:
    return _post(url, "/v1/chat/completions", {**CHAT, "max_tokens": max_tokens,
                                               "response_format": _format({"type": "string", "pattern": pattern})})


def test_a_schema_that_cannot_fit_the_context_is_a_400(url):
    def completion(chars: int, max_tokens: int = 2) -> httpx.Response:
        schema = {"type": "string", "pattern": f"^a{{{chars}}}$"}
        return _post(url, "/v1/completions", {**COMPLETION, "max_tokens": max_tokens, "response_format": _format(schema)})

    # Both sides of the limit: the 1-token prompt leaves 3999 of the 4000, and the quotes are tokens too.
    message = _error(completion(3998), 400, "response_format")
    assert "forces 4000 tokens or more, past the 3999 the context leaves the reply" in message
    assert completion(3997).json()["choices"][0]["finish_reason"] == "length"
    # A max_tokens too small for the schema is no error: the reply ends "length", as OpenAI's does.
    reply = _pattern_chat(url, "^(a{5}){4}$", 12).json()["choices"][0]
    assert reply["finish_reason"] == "length" and ('"' + "a" * 20).startswith(reply["message"]["content"])


@pytest.mark.slow
def test_a_pattern_past_the_lexer_limits_is_a_400(url):
    assert "lexer error" in _error(_pattern_chat(url, "^(a{1000}){1000}$", 4000 - 400), 400, "response_format")


# tool_choice "required" among several tools: once the name is chosen, the rest of the header is forced.

def test_required_tool_choice_forces_the_whole_header(url):
    body = {**CHAT, "tools": [_tool(name="get_weather"), _tool(name="get_time")], "tool_choice": "required"}
    # The name is chosen in a few tokens ("get_time" after "get_t"); the header's rest costs none.
    for max_tokens in (len(ARGS) + 5, 40):
        reply = _post(url, "/v1/chat/completions", {**body, "max_tokens": max_tokens}).json()
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "tool_calls", (max_tokens, reply)
        (call,) = choice["message"]["tool_calls"]
        assert (call["function"]["name"], call["function"]["arguments"]) == ("get_time", ARGS[:-len("<|call|>")])
    # Strict tools (the Responses API's default) take the grammar's way to the same header.
    responses = {"model": "scripted", "input": "q", "max_output_tokens": 40, "tool_choice": "required",
                 "temperature": 0, "tools": [{"type": "function", "name": n} for n in ("get_weather", "get_time")]}
    reply = _post(url, "/v1/responses", responses).json()
    (call,) = reply["output"]
    assert (reply["status"], call["type"], call["name"], json.loads(call["arguments"])) == \
        ("completed", "function_call", "get_time", {"city": "Paris"})


# Accepted where a 400 fits.

@pytest.mark.parametrize("path, change, param, message", [
    ("/v1/chat/completions", {"tools": [_tool(strict="false")]}, "tools", "tools[0].function.strict must be a boolean"),
    ("/v1/responses", {"tools": [{"type": "function", "name": "f", "strict": 1}]}, "tools", "tools[0]"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "tool_calls": [{**CALL, "type": "other"}]}]},
     "messages", "message 1 (assistant): tool_calls[0].type must be 'function', got 'other'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "tool_calls": [CALL]},
                                           {"role": "tool", "tool_call_id": "call_1", "content": "1"},
                                           {"role": "assistant", "tool_calls": [CALL]}]},
     "messages", "message 3 (assistant): tool_calls[0].id 'call_1' repeats an earlier call's id"),
    ("/v1/responses", {"input": [{"type": "function_call", "call_id": "c", "name": "f"},
                                 {"type": "function_call", "call_id": "c", "name": "f"}]},
     "input", "tool_calls[1].id 'c' repeats"),
    *[("/v1/chat/completions", {"logit_bias": {key: 1}}, "logit_bias", f"got {key!r}")
      for key in (" 7 ", "7 ", "+7", "-7", "1_0", "\u0667", "07", "0x7", "1e2", "")],
    ("/v1/chat/completions", {"logit_bias": {"7": 1, "07": 2}}, "logit_bias", "got '07'"),
    ("/v1/completions", {"best_of": 2}, "best_of", "only best_of=1"),
    ("/v1/completions", {"echo": True}, "echo", "echo is not supported"),
    ("/v1/completions", {"suffix": "}"}, "suffix", "suffix"),
])
def test_requests_taken_where_a_400_fits(url, path, change, param, message):
    base = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION,
            "/v1/responses": {"model": "scripted", "input": "q"}}[path]
    assert message in _error(_post(url, path, {**base, **change}), 400, param)


def test_their_defaults_are_still_taken(url):
    chat = {**CHAT, "max_tokens": 2}
    for change in ({"best_of": 1, "echo": False, "suffix": None}, {"best_of": None, "suffix": ""}):
        assert _post(url, "/v1/completions", {**COMPLETION, **change}).status_code == 200, change
    for bias in ({"0": 1, "7": -1, "10": 2}, {}):
        assert _post(url, "/v1/chat/completions", {**chat, "logit_bias": bias}).status_code == 200
    for strict in (True, False, None):
        assert _post(url, "/v1/chat/completions", {**chat, "tools": [_tool(strict=strict)]}).status_code == 200
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [CALL]},
               {"role": "tool", "tool_call_id": "call_1", "content": "1"},
               {"role": "assistant", "tool_calls": [{**CALL, "id": "call_2"}]}]
    assert _post(url, "/v1/chat/completions", {**chat, "messages": history}).status_code == 200


def test_an_oversized_head_is_a_431(url):
    def get(size: int) -> httpx.Response:
        return httpx.get(f"{url}/v1/models", headers={"X-Big": "a" * size}, timeout=TIMEOUT)

    head = len("/v1/models") + sum(len(k) + len(v) + 4 for k, v in {
        "host": url.removeprefix("http://"), "accept": "*/*", "accept-encoding": "gzip, deflate",
        "connection": "keep-alive", "user-agent": f"python-httpx/{httpx.__version__}", "x-big": ""}.items())
    assert get(security.MAX_HEAD_BYTES - head).status_code == 200
    response = get(security.MAX_HEAD_BYTES - head + 1)
    assert response.status_code == 431 and response.json()["error"]["code"] == "request_header_fields_too_large"
    assert response.status_code == get(100_000).status_code


# The HTTP surface.

def test_other_methods_get_405_and_the_openapi_document_declares_bodies(url):
    for method in ("PUT", "PATCH", "DELETE"):
        for kw in ({"json": CHAT}, {"content": b"x"}, {}):
            response = httpx.request(method, f"{url}/v1/chat/completions", timeout=TIMEOUT, **kw)
            assert response.status_code == 405 and "POST" in response.headers["allow"], (method, kw)
    paths = httpx.get(f"{url}/openapi.json", timeout=TIMEOUT).json()["paths"]
    for path, required in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt"),
                           ("/v1/responses", "input")):
        body = paths[path]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert body["required"] and set(schema["required"]) == {"model", required}, path
        assert "$ref" not in json.dumps(schema) and "include_usage" in json.dumps(schema["properties"]["stream_options"])
