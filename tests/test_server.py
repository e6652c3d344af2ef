"""`gpt-oss-triton serve` end to end on the loopback: the official openai client against uvicorn in a thread,
with the embedded tiny model (gibberish, so compared only with itself) and a scripted stand-in model
whose reply is a fixed harmony message (so reasoning and answer can be checked by their text)."""
import asyncio
import contextlib
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
import uvicorn

from gpt_oss_triton.model import GptOss, harmony
from gpt_oss_triton.model.server.app import create_app
from scripted_model import ScriptedModel

TIMEOUT = 60  # seconds, for any one request or wait: generous, as the CPU is shared
MAX_LEN = 320  # the chat prompt (the harmony system message) is ~225 tokens of the byte-level tokenizer
BODY_LIMIT = 16 * 1024
SCRIPT = "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>answer<|return|>"


@contextlib.contextmanager
def in_thread(server: uvicorn.Server):
    """Runs a uvicorn `server` configured for 127.0.0.1 at port 0 in a background thread (`server.thread`);
    yields its base URL once it has started, and stops it after."""
    server.thread = threading.Thread(target=server.run, daemon=True)
    server.thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert server.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        server.thread.join(TIMEOUT)


def serving(app):
    """Runs `app` on 127.0.0.1 at a free port in a background thread; yields its base URL."""
    return in_thread(uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                   lifespan="on")))


@pytest.fixture(scope="module")
def model():
    # One thread: on a loaded 2-core machine, torch's thread pool spinning for cores it does not get is
    # many times slower than one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def url(model):
    app = create_app(model, model.tokenizer, model_name="tiny", max_batch=16, max_len=MAX_LEN,
                     max_body_bytes=BODY_LIMIT)
    with serving(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT) as c:
        yield c


def _stats(url) -> dict:
    return httpx.get(f"{url}/v1/stats", timeout=TIMEOUT).json()


def _wait_for(url, condition) -> dict:
    """The server's stats once `condition(stats)` holds (polled, bounded by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition(stats := _stats(url)):
        assert time.monotonic() < deadline, f"timed out; stats: {stats}"
        time.sleep(0.02)
    return stats


def _chat(client, **kw):
    kw.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return client.chat.completions.create(model="tiny", **kw)


def _joined_chat_stream(stream) -> tuple[str, str, str, object]:
    content, reasoning, finish, usage = [], [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            finish = choice.finish_reason or finish
    return "".join(content), "".join(reasoning), finish, usage


def test_models_and_a_chat_completion(client, model):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reply = _chat(client, messages=messages, max_tokens=8, temperature=0, reasoning_effort="low")
    assert reply.object == "chat.completion" and len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"  # 8 random tokens hit no stop token
    prompt = harmony.render(model.tokenizer, messages, reasoning="low")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == \
        (len(prompt), 8, len(prompt) + 8)


def test_streams_join_up_to_the_non_streamed_reply(client):
    kw = dict(max_tokens=12, temperature=1.0, seed=11)
    whole = _chat(client, **kw)
    streamed = _joined_chat_stream(_chat(client, stream=True, stream_options={"include_usage": True}, **kw))
    msg = whole.choices[0].message
    assert streamed[:3] == (msg.content, getattr(msg, "reasoning_content", None) or "", whole.choices[0].finish_reason)
    assert streamed[3].completion_tokens == whole.usage.completion_tokens

    text = client.completions.create(model="tiny", prompt="Hello", **kw)
    pieces = client.completions.create(model="tiny", prompt="Hello", stream=True, **kw)
    assert "".join(c.choices[0].text for c in pieces) == text.choices[0].text != ""


def test_reasoning_is_returned_apart_from_the_answer(model):
    tok = model.tokenizer
    scripted = ScriptedModel.from_text(tok, lambda context: SCRIPT)
    with serving(create_app(scripted, tok, model_name="scripted", max_batch=2, max_len=512)) as base, \
            openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=TIMEOUT) as c:
        kw = dict(model="scripted", messages=[{"role": "user", "content": "Hi"}], temperature=0)
        reply = c.chat.completions.create(**kw)
        msg = reply.choices[0].message
        assert (msg.content, msg.reasoning_content, reply.choices[0].finish_reason) == ("answer", "think", "stop")
        assert msg.model_extra["reasoning_content"] == "think"
        assert reply.usage.completion_tokens == len(tok.encode(SCRIPT))  # <|return|> included
        assert _joined_chat_stream(c.chat.completions.create(stream=True, **kw))[:3] == ("answer", "think", "stop")
        cut = c.chat.completions.create(stop=["sw"], **kw)
        assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("an", "stop")
        streamed_cut = _joined_chat_stream(c.chat.completions.create(stream=True, stop="sw", **kw))
        assert streamed_cut[:3] == ("an", "think", "stop")
        short = c.chat.completions.create(max_completion_tokens=12, **kw)  # cut inside the reasoning
        msg = short.choices[0].message
        assert (msg.content, msg.reasoning_content, short.choices[0].finish_reason) == ("", "th", "length")


def _error(response: httpx.Response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["param"], error["code"]) == (param, code)
    return error


def test_bad_requests_get_openai_errors_and_the_server_goes_on(url, client):
    chat = f"{url}/v1/chat/completions"
    ok = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

    def post(body):
        return httpx.post(chat, json=body, timeout=TIMEOUT)

    json_type = {"Content-Type": "application/json"}
    _error(httpx.post(chat, content=b'{"model": "tiny", "messages": [', headers=json_type, timeout=TIMEOUT), 400)
    _error(httpx.post(chat, content=b"[1, 2]", headers=json_type, timeout=TIMEOUT), 400)
    _error(post({**ok, "model": "gpt-5"}), 404, "model", "model_not_found")
    _error(post({k: v for k, v in ok.items() if k != "messages"}), 400, "messages")
    _error(post({**ok, "messages": []}), 400, "messages")
    assert "unknown role" in _error(post({**ok, "messages": [{"role": "robot", "content": "x"}]}), 400,
                                    "messages")["message"]
    _error(post({**ok, "messages": [{"role": "user", "content": "x" * 200}]}), 400, "messages",
           "context_length_exceeded")
    _error(post({**ok, "max_tokens": MAX_LEN}), 400, "max_tokens", "context_length_exceeded")
    _error(post({**ok, "max_tokens": 0}), 400, "max_tokens")
    _error(post({**ok, "temperature": -1}), 400, "temperature")
    _error(post({**ok, "top_p": 0}), 400, "top_p")
    _error(post({**ok, "temperature": "hot"}), 400, "temperature")
    _error(post({**ok, "stop": ["a"] * 5}), 400, "stop")
    _error(post({**ok, "n": 2}), 400, "n")
    _error(httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": [1, 10**6]}, timeout=TIMEOUT), 400,
           "prompt")
    _error(post({**ok, "messages": [{"role": "user", "content": "x" * BODY_LIMIT}]}), 413, None, "request_too_large")
    _error(httpx.get(f"{url}/v1/nothing", timeout=TIMEOUT), 404)
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, n=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "n"
    assert post(ok).status_code == 200
    assert _stats(url)["active"] == 0


def test_concurrent_streams_are_batched_and_match_each_alone(url):
    # Different prompt lengths, greedy and seeded sampling: each reply must not depend on its batch mates.
    requests = [dict(prompt="x" * (i + 1) + "?", max_tokens=8, temperature=0.0 if i % 2 else 0.9, seed=i)
                for i in range(16)]
    with openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT) as c:
        alone = [c.completions.create(model="tiny", **r).choices[0].text for r in requests]

    async def one(c, r) -> str:
        stream = await c.completions.create(model="tiny", stream=True, **r)
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def together() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT) as c:
            return await asyncio.gather(*(one(c, r) for r in requests))

    before = _stats(url)["steps"]
    assert asyncio.run(asyncio.wait_for(together(), TIMEOUT)) == alone
    steps = _stats(url)["steps"] - before
    assert steps <= 16 * 8 // 4, f"{steps} forward passes for 128 tokens: the streams were not batched"


def test_a_client_that_goes_away_frees_its_slot(url, client):
    others = [dict(prompt=p, max_tokens=12, temperature=0) for p in ("abc", "hello there")]
    alone = [client.completions.create(model="tiny", **r).choices[0].text for r in others]
    cancelled_before = _stats(url)["finished"].get("cancelled", 0)
    results = [None] * len(others)

    def run(i):
        results[i] = "".join(c.choices[0].text for c in client.completions.create(model="tiny", stream=True,
                                                                                  **others[i]))

    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_LEN - 240,
            "stream": True}
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(others))]
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT) as leaving:
        lines = leaving.iter_lines()
        assert json.loads(next(lines).removeprefix("data: "))["object"] == "chat.completion.chunk"
        for t in threads:
            t.start()
        _wait_for(url, lambda stats: stats["active"] == 3)  # all three in the batch: now leave
    # The stream is closed: the server must notice and cancel its request long before its max_tokens.
    for t in threads:
        t.join(TIMEOUT)
    assert results == alone
    stats = _wait_for(url, lambda stats: stats["finished"].get("cancelled", 0) > cancelled_before
                      and not stats["active"])
    assert stats["finished"]["cancelled"] == cancelled_before + 1


def test_api_key_is_required_when_set(model):
    app = create_app(model, model.tokenizer, model_name="tiny", api_key="sesame", max_batch=1, max_len=MAX_LEN)
    with serving(app) as base:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            _error(httpx.get(f"{base}/v1/models", headers=headers, timeout=TIMEOUT), 401, None, "invalid_api_key")
        with openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0, timeout=TIMEOUT) as c, \
                pytest.raises(openai.AuthenticationError):
            c.models.list()
        with openai.OpenAI(base_url=f"{base}/v1", api_key="sesame", max_retries=0, timeout=TIMEOUT) as c:
            assert [m.id for m in c.models.list().data] == ["tiny"]


def test_serve_command_binds_loopback_by_default(monkeypatch, model):
    from gpt_oss_triton.model import cli
    from gpt_oss_triton.model.server import serving

    servers = []
    monkeypatch.setattr(cli, "_load", lambda args: (model, model.tokenizer))  # the loading is generate's, tested there
    monkeypatch.setattr(serving.Server, "run", lambda self, sockets=None: servers.append(self))
    monkeypatch.setattr(serving, "bind", lambda host, port: None)  # port 8000 may be taken here
    monkeypatch.setattr(serving.gc, "freeze", lambda: None)  # not in the test process
    assert cli.main(["serve", "--max-batch", "2", "--max-len", "256"]) == 0
    (server,), app = servers, servers[0].config.app
    assert (server.config.host, server.config.port, server.shutdown_timeout) == ("127.0.0.1", 8000, 30.0)
    assert (app.state.worker.engine.max_len, len(app.state.worker.engine.slots)) == (256, 2)

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the `serve` extra were not installed
    with pytest.raises(SystemExit, match=r'pip install -e "\.\[serve\]"'):
        cli.main(["serve"])
    assert 'pip install -e ".[serve]"' in (Path(__file__).resolve().parents[1] / "README.md").read_text()
