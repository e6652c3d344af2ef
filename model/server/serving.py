"""Running the app under uvicorn (`server`, `run`): HTTP/1.1 through h11 with OpenAI error bodies and a time
limit on request heads (`Protocol`), and a graceful shutdown on SIGTERM or SIGINT (`Server`).

The first signal stops accepting connections and lets the requests in flight finish for up to
`shutdown_timeout` seconds; then each one still running ends with a 503 error (a stream gets it as its last
event, then `data: [DONE]`) and the process exits with status 0. A second signal ends them at once; a third
stops waiting for anything.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import threading
from collections.abc import Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import APIError

log = logging.getLogger("uvicorn.error")
END_GRACE = 5.0  # seconds for ended requests to send their last bytes before the server stops waiting


def _raw_error(status: int, reason: str, error: APIError) -> bytes:
    """A whole response, written outside h11's state machine: for connections about to be closed."""
    body = json.dumps(error.body()).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + body


class Protocol(H11Protocol):
    """uvicorn's h11 protocol, with two changes: its 400 for a request that is no valid HTTP (or whose
    unfinished head outgrows h11's 16 KiB buffer) is an OpenAI error object, and a request head must be complete within
    `header_timeout` seconds of the connection's start or of its previous response (else a 408 if part of
    it came, and the connection is closed). uvicorn's keep-alive timeout still closes idle connections
    sooner."""

    header_timeout = 30.0

    def connection_made(self, transport) -> None:
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        """Keeps the timer running exactly while the client owes us a request head."""
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)
        else:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a head came: say why the connection ends
            self.transport.write(_raw_error(408, "Request Timeout", APIError(
                408, f"the request head did not arrive within {self.header_timeout:g} s", code="request_timeout")))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_error(400, "Bad Request", APIError(
            400, "the request is not valid HTTP/1.1 (a malformed request line or header, or too long a head)",
            code="invalid_http")))
        self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server with the shutdown above; `end_requests()` ends every request in flight."""

    def __init__(self, config: uvicorn.Config, *, shutdown_timeout: float, end_requests: Callable[[], None],
                 on_listening: Callable[[str], None] | None = None):
        super().__init__(config)
        self.shutdown_timeout, self._end_requests, self._on_listening = shutdown_timeout, end_requests, on_listening
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._ended = False

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self._on_listening is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_listening(f"http://{f'[{host}]' if ':' in host else host}:{port}")

    def handle_exit(self, sig: int, frame) -> None:
        # May run in a signal handler, between any two bytecodes of the loop: only flags and the
        # thread-safe wake-up here, the rest on the loop.
        self._signals += 1
        self.should_exit = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_signal, self._signals)

    def _on_signal(self, count: int) -> None:
        if count == 1:
            log.info("Shutting down: requests in flight have up to %g s to finish (a second signal ends them "
                     "now)", self.shutdown_timeout)
            self._loop.call_later(self.shutdown_timeout, self._end)
        elif count == 2:
            self._end()
        else:
            self.force_exit = True

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        log.info("Ending the requests still in flight with an error")
        self._end_requests()
        self._loop.call_later(END_GRACE, setattr, self, "force_exit", True)

    @contextlib.contextmanager
    def capture_signals(self):
        """As uvicorn's, but without raising the signal again once the server has stopped: the shutdown
        was clean, so the process exits with status 0 (and SIGINT prints no KeyboardInterrupt traceback)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def server(app, *, host: str, port: int, shutdown_timeout: float, read_timeout: float, log_level: str = "info",
           on_listening: Callable[[str], None] | None = None) -> Server:
    """A `Server` for `app` (from `create_app`: its worker's `close` ends the requests in flight)."""
    protocol = type("Protocol", (Protocol,), {"header_timeout": read_timeout})
    # uvicorn's own limit: only if the ending above could not finish every task.
    config = uvicorn.Config(app, host=host, port=port, http=protocol, ws="none", lifespan="on",
                            log_level=log_level, timeout_graceful_shutdown=int(shutdown_timeout + 2 * END_GRACE))
    return Server(config, shutdown_timeout=shutdown_timeout, end_requests=app.state.worker.close,
                  on_listening=on_listening)


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound to (host, port) but not listening yet: taken before the model loads, so a
    port in use fails at once (OSError) and nothing claims to have started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run(app, *, sockets: list[socket.socket] | None = None, **kwargs) -> None:
    """Serves `app` until a signal stops it (on `sockets` from `bind`, else binding kwargs' host and port;
    kwargs as for `server`). Everything loaded so far (the model, the libraries, the tokenizer) is first moved
    out of the garbage collector's sight (`gc.freeze`): else the first full collection, which a large request
    sets off, walks all of it while holding the GIL, a pause of about a second for every connection (measured
    with o200k on the tiny model). Afterwards it is given back (`gc.unfreeze`), so that the interpreter's
    shutdown frees it: frozen, Triton's objects outlive it, and nanobind prints a page of leak warnings."""
    gc.freeze()
    try:
        server(app, **kwargs).run(sockets=sockets)
    finally:
        gc.unfreeze()
