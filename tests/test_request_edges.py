"""Server limits end to end, on both sides: the Responses store's eviction (oldest stored out first, exactly at
its limit; reads and follow-ups do not refresh an entry), which field a 400 names when two are bad (the rule
README.md states), a body of exactly --max-body-bytes, logit_bias ids at vocab_size - 1 and vocab_size, and
unbracketed IPv6 Host headers. The model is a ScriptedModel that always answers "Hi"."""
import json

import httpx
import pytest

from gpt_oss_triton.model import Tokenizer
from gpt_oss_triton.model.server import responses
from gpt_oss_triton.model.server.app import create_app
from scripted_model import ScriptedModel
from test_server import TIMEOUT, serving

LIMIT = 4096
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def url(tok):
    model = ScriptedModel.from_text(tok, lambda context: "<|channel|>final<|message|>Hi<|return|>")
    with serving(create_app(model, tok, model_name="scripted", max_batch=2, max_len=1024,
                            max_body_bytes=LIMIT)) as base:
        yield base


def _post(url, path, body, **kw):
    return httpx.post(f"{url}/v1/{path}", json=body, timeout=TIMEOUT, **kw)


def _param(response, status=400):
    assert response.status_code == status, response.text
    return response.json()["error"]["param"]


def test_the_store_keeps_the_last_responses_oldest_out_first(url, monkeypatch):
    assert responses.STORED_RESPONSES == 256
    monkeypatch.setattr(responses, "STORED_RESPONSES", 3)  # the same rule as at 256, in 7 requests

    def create(**kw):
        response = _post(url, "responses", {"model": "scripted", "input": "Hi", "max_output_tokens": 4, **kw})
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def kept(ids):
        return [httpx.get(f"{url}/v1/responses/{i}", timeout=TIMEOUT).status_code == 200 for i in ids]

    first = [create() for _ in range(3)]
    assert kept(first) == [True, True, True]  # exactly at the limit: all there (and read back)
    fourth = create()
    assert kept(first + [fourth]) == [False, True, True, True]  # the oldest went, though read last
    response = _post(url, "responses", {"model": "scripted", "input": "Hi", "previous_response_id": first[0]})
    assert _param(response) == "previous_response_id" and "last 3 stored" in response.json()["error"]["message"]
    unstored = create(store=False)
    assert kept([unstored, first[1]]) == [False, True]  # store: false neither keeps it nor evicts
    follow_up = create(previous_response_id=first[1])  # following up on first[1] does not refresh it
    assert kept(first[1:] + [fourth, follow_up]) == [False, True, True, True]


@pytest.mark.parametrize("change, param", [
    ({"stream": "yes", "max_tokens": "4"}, "max_tokens"),  # two bad types: the first in the schema's order
    ({"top_logprobs": "x", "messages": 5}, "messages"),
    ({"temperature": 500.0, "stream": "yes"}, "stream"),  # a bad type before any bad value
    ({"model": "other", "temperature": 500.0}, "model"),  # values: the model first
    ({"tools": [{"type": "nope"}], "messages": [{"role": "nobody", "content": "x"}]}, "tools"),
    ({"top_p": 2.0, "temperature": 500.0}, "temperature"),  # sampling values: their order, all in the message
    ({"logit_bias": {"5": 500.0}, "presence_penalty": 3.0}, "presence_penalty"),
    ({"max_tokens": 5000, "temperature": 500.0}, "max_tokens"),  # the context before the sampling values
])
def test_which_field_a_400_names_when_two_are_bad(url, change, param):
    response = _post(url, "chat/completions", {**CHAT, **change})
    assert _param(response, 404 if param == "model" else 400) == param
    if param == "temperature":
        message = response.json()["error"]["message"]
        assert "temperature" in message and "top_p" in message


def test_a_body_of_exactly_max_body_bytes_is_served(url):
    def padded(size: int) -> bytes:
        body = json.dumps(CHAT).encode()
        return body[:-1] + b" " * (size - len(body)) + b"}"

    headers = {"Content-Type": "application/json"}
    for size, status in ((LIMIT, 200), (LIMIT + 1, 413)):
        body = padded(size)
        assert len(body) == size
        response = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=TIMEOUT)
        assert response.status_code == status, response.text
        chunks = (body[i:i + 1000] for i in range(0, size, 1000))  # no Content-Length: counted as it arrives
        response = httpx.post(f"{url}/v1/chat/completions", content=chunks, headers=headers, timeout=TIMEOUT)
        assert response.status_code == status, response.text


def test_logit_bias_ids_up_to_the_last_in_the_vocabulary(url, tok):
    last = tok.vocab_size - 1
    assert _post(url, "chat/completions", {**CHAT, "logit_bias": {str(last): -100}}).status_code == 200
    for token in (tok.vocab_size, tok.vocab_size + 1):
        response = _post(url, "chat/completions", {**CHAT, "logit_bias": {str(token): 1}})
        assert _param(response) == "logit_bias" and f"[0, {tok.vocab_size})" in response.json()["error"]["message"]
    assert _post(url, "chat/completions", CHAT).status_code == 200  # the engine goes on


@pytest.mark.parametrize("host, status", [("::1", 200), ("fe80::1", 200), ("[::1]", 200), ("[::1", 400),
                                          ("evillocalhost", 400)])
def test_ipv6_host_headers(url, host, status):
    assert httpx.get(f"{url}/v1/models", headers={"Host": host}, timeout=TIMEOUT).status_code == status
