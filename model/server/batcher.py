"""The one engine every request shares, stepped by one background thread.

Request handlers run on the event loop; the engine's forward passes must not, or one long step would
stall every connection. So `EngineWorker` loops `engine.step()` on its own thread while there is work
and sleeps on a condition when there is none. Requests submitted while it steps are admitted at the
next step: that is what batches concurrent requests. Each new token goes back to the loop through
`call_soon_threadsafe` into the request's `TokenStream`. The worker bounds the queue (`max_queue`: over it a
429), refuses new requests once it is closed (a 503), and feeds the server's metrics.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter

from ..runtime.engine import Engine, Request
from ..runtime.sampling import SamplingParams
from .errors import APIError, shutting_down
from .metrics import Metrics

log = logging.getLogger(__name__)


class TokenStream:
    """One request's new token ids, read on the event loop with `async for`; `cancel()` frees its slot."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_cancel):
        self._loop, self._on_cancel = loop, on_cancel
        self._queue: asyncio.Queue = asyncio.Queue()
        self._done = False
        self.request: Request | None = None
        self.submitted = time.perf_counter()
        self.first_token: float | None = None

    def put(self, item) -> None:
        """From the engine thread: a token id, None at the end, or the exception that ended it."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is shutting down and nobody is listening
            pass

    def cancel(self) -> None:
        """Drops the request at the engine's next step; a no-op once it has finished."""
        if self.request is not None:
            self.request.cancel()
        self._on_cancel(self)

    def __aiter__(self):
        return self

    async def __anext__(self) -> int:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None or isinstance(item, BaseException):
            self._done = True
            if item is None:
                raise StopAsyncIteration
            raise item
        return item


class EngineWorker:
    """Owns `engine` and the thread that steps it; `submit` is called on the event loop."""

    def __init__(self, engine: Engine, *, max_queue: int | None = None, metrics: Metrics | None = None):
        self.engine, self.max_queue = engine, max_queue
        self.metrics = metrics or Metrics()
        self.finished: Counter = Counter()  # requests ended, by reason: stop, length, cancelled
        self._live: set[TokenStream] = set()
        self._closed = False
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpt-oss-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ends the thread after its current step; requests still running get a 503 error."""
        self._closed = True
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self._fail_all(shutting_down)

    def close(self) -> None:
        """Refuses new requests and ends every one in flight with a 503 error (streams get it as their last
        event); the thread goes on until `stop`. Called on the event loop."""
        self._closed = True
        self._fail_all(shutting_down)

    def queued(self) -> int:
        """Requests waiting for a slot (those cancelled while waiting no longer count)."""
        return sum(not r.cancelled for r in list(self.engine.waiting))

    def running(self) -> int:
        return sum(r is not None for r in list(self.engine.slots))

    def submit(self, prompt: list[int], params: SamplingParams, stop_tokens, constraint=None) -> TokenStream:
        """Queues a request and returns its token stream: ValueError if it breaks a limit, an APIError when
        the queue is full (429) or the server is shutting down (503). `constraint` is the engine's
        TokenConstraint, if any."""
        if self._closed:
            raise shutting_down()
        # Requests that arrive while a step runs wait for the next one even when slots are free: those
        # will be admitted then, so only the excess over the free slots counts against the queue.
        free = len(self.engine.slots) - self.running()
        if self.max_queue is not None and self.queued() - free >= self.max_queue:
            raise APIError(429, f"the server is busy: {self.max_queue} requests are already waiting for one of "
                                f"its {len(self.engine.slots)} slots; retry shortly", type="server_error",
                           code="queue_full", headers={"Retry-After": "1"})
        # A request cancelled while still queued gets no end-of-stream callback, so cancel() forgets it here.
        stream = TokenStream(asyncio.get_running_loop(), on_cancel=self._live.discard)
        # Registered before the engine sees the request: the engine thread may deliver its first token
        # before engine.submit has even returned.
        self._live.add(stream)
        try:
            stream.request = self.engine.submit(prompt, params, stop_tokens,
                                                on_token=lambda request, token: self._deliver(stream, request, token),
                                                constraint=constraint)
        except ValueError:
            self._live.discard(stream)
            raise
        self.metrics.prompt_tokens.inc(len(prompt))
        with self._wake:
            self._wake.notify()
        return stream

    def stats(self) -> dict:
        return {"steps": self.engine.steps, "active": self.running(), "max_batch": len(self.engine.slots),
                "waiting": len(self.engine.waiting), "finished": dict(self.finished)}

    def _deliver(self, stream: TokenStream, request: Request, token: int | None) -> None:
        # Engine thread: the engine's on_token callback.
        if token is None:
            self.finished[request.stats.stopped_by] += 1
            self.metrics.finished.inc(1.0, request.stats.stopped_by)
            self._live.discard(stream)
        else:
            self.metrics.completion_tokens.inc()
            if stream.first_token is None:
                stream.first_token = time.perf_counter()
                self.metrics.time_to_first_token.observe(stream.first_token - stream.submitted)
        stream.put(token)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stopping or self.engine.busy)
                if self._stopping:
                    return
            steps, start = self.engine.steps, time.perf_counter()
            try:
                self.engine.step()
            except Exception as e:  # keep serving: fail the requests in flight, not the server
                log.exception("engine step failed")
                self._fail_all(lambda error=e: error)
            else:
                if self.engine.steps != steps:  # a forward ran (not just cancelled requests dropped)
                    self.metrics.step_time.observe(time.perf_counter() - start)

    def _fail_all(self, error) -> None:
        """Ends every live stream with `error()` (a fresh exception each: they are raised in different tasks)."""
        for stream in list(self._live):
            self._live.discard(stream)
            stream.cancel()
            stream.put(error())
