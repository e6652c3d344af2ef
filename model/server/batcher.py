"""The one engine every request shares, stepped by one background thread.

Request handlers run on the event loop; the engine's forward passes must not, or one long step would
stall every connection. So `EngineWorker` loops `engine.step()` on its own thread while there is work
and sleeps on a condition when there is none. Requests submitted while it steps are admitted at the
next step: that is what batches concurrent requests. Each new token goes back to the loop through
`call_soon_threadsafe` into the request's `TokenStream`.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter

from ..runtime.engine import Engine, Request
from ..runtime.sampling import SamplingParams

log = logging.getLogger(__name__)


class TokenStream:
    """One request's new token ids, read on the event loop with `async for`; `cancel()` frees its slot."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_cancel):
        self._loop, self._on_cancel = loop, on_cancel
        self._queue: asyncio.Queue = asyncio.Queue()
        self._done = False
        self.request: Request | None = None

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

    def __init__(self, engine: Engine):
        self.engine = engine
        self.finished: Counter = Counter()  # requests ended, by reason: stop, length, cancelled
        self._live: set[TokenStream] = set()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpt-oss-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ends the thread after its current step; requests still running get an error."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self._fail_all(RuntimeError("the server is shutting down"))

    def submit(self, prompt: list[int], params: SamplingParams, stop_tokens, constraint=None) -> TokenStream:
        """Queues a request (ValueError if it breaks a limit) and returns its token stream; `constraint` is
        the engine's TokenConstraint, if any."""
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
        with self._wake:
            self._wake.notify()
        return stream

    def stats(self) -> dict:
        slots = self.engine.slots
        return {"steps": self.engine.steps, "active": sum(r is not None for r in slots), "max_batch": len(slots),
                "waiting": len(self.engine.waiting), "finished": dict(self.finished)}

    def _deliver(self, stream: TokenStream, request: Request, token: int | None) -> None:
        # Engine thread: the engine's on_token callback.
        if token is None:
            self.finished[request.stats.stopped_by] += 1
            self._live.discard(stream)
        stream.put(token)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stopping or self.engine.busy)
                if self._stopping:
                    return
            try:
                self.engine.step()
            except Exception as e:  # keep serving: fail the requests in flight, not the server
                log.exception("engine step failed")
                self._fail_all(e)

    def _fail_all(self, error: BaseException) -> None:
        for stream in list(self._live):
            self._live.discard(stream)
            stream.cancel()
            stream.put(error)
