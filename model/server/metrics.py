"""Prometheus metrics at GET /metrics, in the text exposition format (version 0.0.4), written here: the
format is a few lines per metric, and the server's handful of counters and histograms need no library.

`Metrics` holds them: the engine thread adds tokens, time to first token and step times; `CountResponses`
(an ASGI middleware) counts every response by route and status; gauges (queue depth, running requests)
are read when scraped.
"""
from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds. A first token waits for the queue and the prefill; a step is one forward of the whole batch.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _number(v: float) -> str:
    return ("+Inf" if v > 0 else "-Inf") if math.isinf(v) else repr(float(v))


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    escaped = (str(v).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped)) + "}"


def _header(name: str, help: str, kind: str) -> list[str]:
    escaped = help.replace("\\", r"\\").replace("\n", r"\n")
    return [f"# HELP {name} {escaped}", f"# TYPE {name} {kind}"]


class Counter:
    def __init__(self, lock: threading.Lock, name: str, help: str, labels: tuple[str, ...] = ()):
        self._lock, self.name, self.help, self.labels = lock, name, help, labels
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, *label_values: str) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def lines(self) -> list[str]:
        with self._lock:
            values = sorted(self._values.items())
        if not self.labels and not values:
            values = [((), 0.0)]
        return _header(self.name, self.help, "counter") + [
            f"{self.name}{_labels(self.labels, k)} {_number(v)}" for k, v in values]


class Histogram:
    def __init__(self, lock: threading.Lock, name: str, help: str, buckets: Iterable[float]):
        self._lock, self.name, self.help = lock, name, help
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)  # per bucket, not cumulative
        self._sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1  # the first bucket with value <= le
            self._sum += value

    def lines(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, cumulative = _header(self.name, self.help, "histogram"), 0
        for le, n in zip(self.buckets, counts):
            cumulative += n
            out.append(f'{self.name}_bucket{{le="{_number(le)}"}} {cumulative}')
        return out + [f"{self.name}_sum {_number(total)}", f"{self.name}_count {cumulative}"]


class Metrics:
    """The server's metrics; `gauges` are (name, help, read) triples, read at each scrape."""

    def __init__(self, gauges: Iterable[tuple[str, str, Callable[[], float]]] = ()):
        lock = threading.Lock()
        self.requests = Counter(lock, "gpt_oss_http_requests_total", "HTTP responses by route and status code",
                                ("endpoint", "status"))
        self.prompt_tokens = Counter(lock, "gpt_oss_prompt_tokens_total", "Prompt tokens of requests submitted")
        self.completion_tokens = Counter(lock, "gpt_oss_completion_tokens_total", "Tokens generated")
        self.finished = Counter(lock, "gpt_oss_requests_finished_total",
                                "Generation requests ended, by reason (stop, length, cancelled)", ("reason",))
        self.time_to_first_token = Histogram(lock, "gpt_oss_time_to_first_token_seconds",
                                             "From submission (queueing included) to the first new token",
                                             TTFT_BUCKETS)
        self.step_time = Histogram(lock, "gpt_oss_engine_step_seconds", "Wall time of one engine step",
                                   STEP_BUCKETS)
        self.gauges = list(gauges)

    def render(self) -> str:
        lines = []
        for name, help, read in self.gauges:
            lines += _header(name, help, "gauge") + [f"{name} {_number(read())}"]
        for metric in (self.requests, self.prompt_tokens, self.completion_tokens, self.finished,
                       self.time_to_first_token, self.step_time):
            lines += metric.lines()
        return "\n".join(lines) + "\n"


class CountResponses:
    """ASGI middleware: counts each HTTP response by its route and status. The route is the request's path
    when it is one of `paths()` (read at the first request) or the path of the route that matched; any other
    path counts as "other", so probing clients cannot grow the label set."""

    def __init__(self, app, *, metrics: Metrics, paths: Callable[[], Iterable[str]]):
        self.app, self.metrics, self._paths = app, metrics, paths
        self._known: frozenset[str] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless the app starts a response: an exception that escaped it becomes a 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if self._known is None:
                self._known = frozenset(self._paths())
            matched = getattr(scope.get("route"), "path", None)
            endpoint = scope["path"] if scope["path"] in self._known else matched or "other"
            self.metrics.requests.inc(1.0, endpoint, str(status))
