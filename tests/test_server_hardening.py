"""The server's defences, end to end on the loopback with the tiny model, under the production uvicorn setup
(`serving.server`: its h11 protocol and shutdown): every bad input gets its 4xx OpenAI error object and the
server keeps serving; Host, Content-Type, CORS and docs defaults; abandoned requests free their slots; a
full queue answers 429; SIGTERM/SIGINT end every stream cleanly; /metrics is Prometheus text."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from test_server import TIMEOUT, _stats, _wait_for, in_thread

from gpt_oss_triton.model import GptOss, harmony
from gpt_oss_triton.model.server import serving
from gpt_oss_triton.model.server.app import create_app
from gpt_oss_triton.model.server.body import MAX_DEPTH

MAX_LEN = 1024
BODY_LIMIT = 128 * 1024
READ_TIMEOUT = 2.0  # for request heads and bodies
JSON = {"Content-Type": "application/json"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
LONG = {"model": "tiny", "prompt": "x", "max_tokens": MAX_LEN - 8, "temperature": 0}  # many steps: still running


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine runs one thread many times faster than a spinning pool
    yield GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
    torch.set_num_threads(threads)


@contextlib.contextmanager
def running(app, shutdown_timeout: float = 5.0):
    """`app` under `serving.server` on 127.0.0.1 at a free port, in a thread; yields (base URL, server)."""
    server = serving.server(app, host="127.0.0.1", port=0, shutdown_timeout=shutdown_timeout,
                            read_timeout=READ_TIMEOUT, log_level="warning")
    with in_thread(server) as url:
        yield url, server


@pytest.fixture(scope="module")
def url(model):
    app = create_app(model, model.tokenizer, model_name="tiny", max_batch=8, max_len=MAX_LEN,
                     max_body_bytes=BODY_LIMIT, max_queue=4, default_max_tokens=6, read_timeout=READ_TIMEOUT,
                     allowed_hosts=["gpt.example"])
    with running(app) as (base, _):
        yield base


def _error(response: httpx.Response, status: int, param=None, code=None, type="invalid_request_error") -> str:
    """The message of an OpenAI error object with this status, param, code and type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, type), error
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]


def _raw(url, data: bytes, *, wait: float = TIMEOUT) -> bytes:
    """What the server answers to `data` sent as is on a fresh connection, up to its close."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(data)
        reply = b""
        while piece := s.recv(65536):
            reply += piece
    return reply


def _raw_error(reply: bytes, status: int, code: str) -> None:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), reply
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == code


def _post_head(path: str, length: int, host: str = "127.0.0.1") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_types_are_checked_not_coerced(url):
    chat = f"{url}/v1/chat/completions"
    for field, value in [("max_tokens", "4"), ("max_tokens", True), ("max_tokens", 4.0), ("stream", "yes"),
                         ("n", "2"), ("temperature", True), ("seed", "1"), ("stream_options", {"include_usage": 1})]:
        message = _error(httpx.post(chat, json={**CHAT, field: value}, timeout=TIMEOUT), 400, field)
        assert message.startswith(field)
    _error(httpx.post(f"{url}/v1/completions", json={**LONG, "prompt": [1, "2"]}, timeout=TIMEOUT), 400, "prompt")
    assert httpx.post(chat, json={**CHAT, "temperature": 0}, timeout=TIMEOUT).status_code == 200  # int for float


def test_malformed_bodies_get_400s(url):
    chat = f"{url}/v1/chat/completions"

    def post(content: bytes, path=chat):
        return httpx.post(path, content=content, headers=JSON, timeout=TIMEOUT)

    deep = ("[" * 100_000).encode(), ('{"a":' * 20_000).encode(), ("[" * 50_000 + "]" * 50_000).encode()
    for body in deep:
        assert "deeper than" in _error(post(body), 400)
    # The limit itself: nesting of exactly MAX_DEPTH levels is taken (unknown fields are ignored), one more is not.
    nested = lambda depth: json.dumps({**CHAT, "extra": json.loads("[" * (depth - 1) + "]" * (depth - 1))})
    assert post(nested(MAX_DEPTH).encode()).status_code == 200
    assert "deeper than" in _error(post(nested(MAX_DEPTH + 1).encode()), 400)
    # Brackets inside strings, escaped quotes and backslashes included, are no nesting.
    assert post(json.dumps({**CHAT, "extra": '\\"[' * 1000 + "\\"}).encode()).status_code == 200

    surrogate = _error(post(b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}'), 400,
                       "messages")
    assert surrogate.startswith("messages.0.content")
    _error(post(b'{"model": "tiny", "prompt": "a\\udfffb"}', f"{url}/v1/completions"), 400, "prompt")
    _error(post(b'{"model": "tiny", "messages": [{"role": "user", "content": "a\xff"}]}'), 400)  # not UTF-8
    _error(post(b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}'), 400)
    _error(post(b'{"model": "tiny", "messages": '), 400)
    _error(post(b""), 400)
    _error(post(b'"a string"'), 400)
    assert _stats(url)["active"] == 0


def test_a_prompt_too_long_for_the_context_is_refused_before_tokenising(url):
    # The byte-level tokenizer's longest token is a 19-character special: this many bytes cannot fit.
    response = httpx.post(f"{url}/v1/completions", json={**LONG, "prompt": "x" * (19 * MAX_LEN)}, timeout=TIMEOUT)
    assert "bytes of text make at least" in _error(response, 400, "prompt", "context_length_exceeded")
    chat = {**CHAT, "messages": [{"role": "user", "content": "é" * (19 * MAX_LEN // 2)}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=TIMEOUT)
    assert "bytes of text make at least" in _error(response, 400, "messages", "context_length_exceeded")


def test_http_layer_errors_are_openai_errors(url):
    chat = f"{url}/v1/chat/completions"
    _error(httpx.get(f"{url}/v1/nothing", timeout=TIMEOUT), 404)
    assert _error(httpx.get(chat, timeout=TIMEOUT), 405)
    # No redirect for a trailing slash: uvicorn's Location would carry whatever Host the client sent.
    slash = httpx.get(f"{url}/v1/models/", timeout=TIMEOUT)
    _error(slash, 404)
    assert "location" not in slash.headers
    _error(httpx.post(chat, json={**CHAT, "messages": [{"role": "user", "content": "x" * BODY_LIMIT}]},
                      timeout=TIMEOUT), 413, code="request_too_large")

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(BODY_LIMIT // 1024 + 1):
            yield b" " * 1024

    _error(httpx.post(chat, content=chunks(), headers=JSON, timeout=TIMEOUT), 413, code="request_too_large")
    # uvicorn's own answers to broken HTTP, through serving.Protocol.
    _raw_error(_raw(url, b"NONSENSE\r\n\r\n"), 400, "invalid_http")
    _raw_error(_raw(url, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n"), 400,
               "invalid_http")
    # A head or a body that does not come in time.
    _raw_error(_raw(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"), 408, "request_timeout")
    _raw_error(_raw(url, _post_head("/v1/chat/completions", 100) + b'{"model": '), 408, "request_timeout")
    assert _raw(url, b"", wait=READ_TIMEOUT * 10) == b""  # a silent connection is closed, no reply
    assert httpx.post(chat, json=CHAT, timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/json; charset=latin-1"])
def test_bodies_must_be_declared_json(url, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(CHAT), headers=headers, timeout=TIMEOUT)
    assert "Content-Type: application/json" in _error(response, 415, code="unsupported_media_type")


def test_json_with_utf8_charset_is_accepted(url):
    response = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(CHAT),
                          headers={"Content-Type": "Application/JSON; charset=UTF-8"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("host,allowed", [
    ("evil.example", False), ("evil.example:80", False), ("127.0.0.1.evil.example", False), ("localhost.", True),
    ("localhost:8000", True), ("LOCALHOST", True), ("app.localhost", True), ("[::1]:8000", True),
    ("10.1.2.3", True), ("gpt.example:8000", True)])
def test_host_header_is_checked(url, host, allowed):
    response = httpx.get(f"{url}/v1/models", headers={"Host": host}, timeout=TIMEOUT)
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert "--allowed-hosts" in _error(response, 400, code="host_not_allowed")


def test_no_cors_and_no_docs_by_default(url):
    preflight = httpx.options(f"{url}/v1/chat/completions", timeout=TIMEOUT, headers={
        "Origin": "http://page.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    for path in ("/docs", "/redoc", "/openapi.json"):
        _error(httpx.get(f"{url}{path}", timeout=TIMEOUT), 404)


def test_key_guards_docs_and_metrics_and_cors_is_opt_in(model):
    app = create_app(model, model.tokenizer, model_name="tiny", api_key="sesame", max_batch=1, max_len=MAX_LEN,
                     docs=True, cors_origins=["http://ui.example"])
    with running(app) as (base, _):
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics", "/v1/models"):
            _error(httpx.get(f"{base}{path}", timeout=TIMEOUT), 401, code="invalid_api_key")
            assert httpx.get(f"{base}{path}", headers={"Authorization": "Bearer sesame"},
                             timeout=TIMEOUT).status_code == 200
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        ok = httpx.options(f"{base}/v1/chat/completions", timeout=TIMEOUT,
                           headers={"Origin": "http://ui.example", **preflight})
        assert ok.headers["access-control-allow-origin"] == "http://ui.example"
        other = httpx.options(f"{base}/v1/chat/completions", timeout=TIMEOUT,
                              headers={"Origin": "http://page.example", **preflight})
        assert "access-control-allow-origin" not in other.headers


def test_internal_errors_name_no_internals(model, monkeypatch):
    app = create_app(model, model.tokenizer, model_name="tiny", max_batch=1, max_len=MAX_LEN)

    def boom(*args, **kwargs):
        raise RuntimeError("secret detail /home/user/model")

    real_step, steps = app.state.worker.engine.step, []

    def step_fails_once():
        steps.append(1)
        return boom() if len(steps) == 1 else real_step()

    with running(app) as (base, _):
        monkeypatch.setattr(harmony, "render", boom)
        response = httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=TIMEOUT)
        message = _error(response, 500, code="internal_error", type="server_error")
        assert "request id req-" in message and "secret" not in response.text
        monkeypatch.undo()
        monkeypatch.setattr(app.state.worker.engine, "step", step_fails_once)
        with httpx.stream("POST", f"{base}/v1/completions", json={**LONG, "stream": True}, timeout=TIMEOUT) as s:
            events = [line.removeprefix("data: ") for line in s.iter_lines() if line]
        assert events[-1] == "[DONE]" and "secret" not in "".join(events)
        assert json.loads(events[-2])["error"]["code"] == "internal_error"


def test_chat_gets_the_default_token_limit(url):
    reply = httpx.post(f"{url}/v1/chat/completions", json={k: v for k, v in CHAT.items() if k != "max_tokens"}
                       | {"temperature": 0}, timeout=TIMEOUT).json()
    assert (reply["usage"]["completion_tokens"], reply["choices"][0]["finish_reason"]) == (6, "length")


def _abandon(url, requests: int) -> list[socket.socket]:
    """Sends `requests` long non-streaming completions on raw sockets, left open for the caller to close."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(LONG).encode()
    sockets = []
    for _ in range(requests):
        s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        s.sendall(_post_head("/v1/completions", len(body)) + body)
        sockets.append(s)
    return sockets


def test_abandoned_requests_free_their_slots(url):
    cancelled = _stats(url)["finished"].get("cancelled", 0)
    sockets = _abandon(url, 8)
    _wait_for(url, lambda stats: stats["active"] == 8)
    for s in sockets:
        s.close()
    # Each was cancelled (not run to its max_tokens): the slots are free for a new request.
    stats = _wait_for(url, lambda stats: stats["active"] == 0)
    assert stats["finished"]["cancelled"] == cancelled + 8
    reply = httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 4}, timeout=TIMEOUT).json()
    assert reply["usage"]["completion_tokens"] == 4


def test_a_full_queue_answers_429(url):
    sockets = _abandon(url, 8 + 4)  # every slot busy and 4 (max_queue) waiting
    try:
        _wait_for(url, lambda stats: stats["active"] == 8 and stats["waiting"] == 4)
        response = httpx.post(f"{url}/v1/completions", json=LONG, timeout=TIMEOUT)
        _error(response, 429, code="queue_full", type="server_error")
        assert int(response.headers["retry-after"]) >= 1
    finally:
        for s in sockets:
            s.close()
    _wait_for(url, lambda stats: stats["active"] == 0 and stats["waiting"] == 0)
    assert httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 2}, timeout=TIMEOUT).status_code == 200


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_are_prometheus_text(url):
    httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 3}, timeout=TIMEOUT).raise_for_status()
    httpx.post(f"{url}/v1/completions", content=b"{}", timeout=TIMEOUT)  # a 415
    response = httpx.get(f"{url}/metrics", timeout=TIMEOUT)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = _families(response.text)
    assert {"gpt_oss_queue_depth", "gpt_oss_running_requests", "gpt_oss_batch_slots"} <= {
        name for name, f in families.items() if f.type == "gauge"}
    requests = {(s.labels["endpoint"], s.labels["status"]): s.value
                for s in families["gpt_oss_http_requests"].samples}
    assert requests[("/v1/completions", "200")] >= 1 and requests[("/v1/completions", "415")] >= 1
    assert families["gpt_oss_batch_slots"].samples[0].value == 8
    assert families["gpt_oss_completion_tokens"].samples[0].value >= 3
    assert families["gpt_oss_prompt_tokens"].samples[0].value >= 1
    for name in ("gpt_oss_time_to_first_token_seconds", "gpt_oss_engine_step_seconds"):
        assert families[name].type == "histogram"
        samples = {(s.name, s.labels.get("le")): s.value for s in families[name].samples}
        buckets = [v for (n, le), v in samples.items() if n.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == samples[(f"{name}_count", None)] > 0
        assert samples[(f"{name}_bucket", "+Inf")] == buckets[-1]
    # Probing paths do not grow the label set.
    httpx.get(f"{url}/probe-{time.monotonic_ns()}", timeout=TIMEOUT)
    labels = {s.labels["endpoint"] for s in _families(httpx.get(f"{url}/metrics", timeout=TIMEOUT).text)[
        "gpt_oss_http_requests"].samples}
    assert "other" in labels and not any(label.startswith("/probe") for label in labels)


def _events(stream):
    for line in stream.iter_lines():
        if line:
            yield line.removeprefix("data: ")


def test_shutdown_lets_requests_finish_then_ends_the_rest(model):
    app = create_app(model, model.tokenizer, model_name="tiny", max_batch=4, max_len=4096)
    body = {**LONG, "max_tokens": 4000, "stream": True}  # far from done when the shutdown timeout ends them
    replies = {}

    def post(name: str, max_tokens: int):
        response = httpx.post(f"{base}/v1/completions", json={**LONG, "max_tokens": max_tokens}, timeout=TIMEOUT)
        replies[name] = response

    with running(app, shutdown_timeout=2.0) as (base, server), contextlib.ExitStack() as stack:
        streams = [_events(stack.enter_context(httpx.stream("POST", f"{base}/v1/completions", json=body,
                                                            timeout=TIMEOUT))) for _ in range(2)]
        for events in streams:
            assert json.loads(next(events))["object"] == "text_completion"
        threads = [threading.Thread(target=post, args=args) for args in (("short", 2), ("long", 4000))]
        for thread in threads:
            thread.start()
        _wait_for(base, lambda stats: stats["active"] + stats["finished"].get("length", 0) == 4)
        server.handle_exit(signal.SIGTERM, None)
        # Requests in flight go on: the short one finishes, the streams still get tokens.
        threads[0].join(TIMEOUT)
        assert replies["short"].json()["choices"][0]["finish_reason"] == "length"
        for events in streams:
            assert "choices" in json.loads(next(events))
        deadline = time.monotonic() + TIMEOUT
        while True:  # but no new connection is taken, once uvicorn's loop has seen the signal
            try:
                httpx.get(f"{base}/v1/models", timeout=TIMEOUT)
            except (httpx.ConnectError, httpx.RemoteProtocolError):  # refused, or closed unanswered mid-shutdown
                break
            assert time.monotonic() < deadline, "the server still accepts connections"
            time.sleep(0.02)
        # After the timeout each stream ends with an error event, then [DONE]; the other request gets a 503.
        for events in streams:
            rest = list(events)
            assert rest[-1] == "[DONE]"
            assert json.loads(rest[-2])["error"]["code"] == "server_shutting_down"
        threads[1].join(TIMEOUT)
        _error(replies["long"], 503, code="server_shutting_down", type="server_error")
    assert not server.thread.is_alive()


def test_signals_end_the_serve_command_cleanly(tmp_path):
    """SIGTERM drains, a second signal (SIGINT) ends the streams at once with an error and [DONE], and
    `gpt-oss-triton serve` exits with status 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gpt_oss_triton.model.cli", "serve", "--port", "0", "--max-len", "4096",
               "--max-batch", "2", "--dtype", "float32"]
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 2 * TIMEOUT
        base = None
        while base is None:
            assert process.poll() is None and time.monotonic() < deadline, log.seek(0) or log.read()
            time.sleep(0.1)
            log.seek(0)
            base = next((line.split(" on ")[-1].strip().removesuffix("/v1") for line in log
                         if line.startswith("gpt-oss-triton: serving")), None)
        body = {**LONG, "max_tokens": 4000, "stream": True}
        with contextlib.ExitStack() as stack:
            streams = [_events(stack.enter_context(httpx.stream("POST", f"{base}/v1/completions", json=body,
                                                                timeout=TIMEOUT))) for _ in range(2)]
            for events in streams:
                next(events)
            process.send_signal(signal.SIGTERM)
            for events in streams:  # draining: still served (the default shutdown timeout is 30 s)
                assert "choices" in json.loads(next(events))
            process.send_signal(signal.SIGINT)
            for events in streams:
                rest = list(events)
                assert rest[-1] == "[DONE]"
                assert json.loads(rest[-2])["error"]["code"] == "server_shutting_down"
        assert process.wait(TIMEOUT) == 0
        log.seek(0)
        assert "Traceback" not in log.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
