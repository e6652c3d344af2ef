"""One request's generation as a response sees it: the limits checked and the request submitted
(`start`), its tokens read back through an assembler (`Generation`), and server-sent events
(`EventStream`). Shared by every protocol module."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.responses import StreamingResponse

from ..runtime.sampling import SamplingParams
from ..tokenizer import Tokenizer
from . import schemas
from .assembly import ChatAssembler, Delta, TextAssembler
from .batcher import EngineWorker, TokenStream
from .errors import APIError, sampling_param_name, server_error

_FINISH_REASONS = {"stop": "stop", "length": "length"}


@dataclass
class ServerContext:
    """What every protocol module's routes share: the engine worker, the tokenizer and the server's settings."""

    worker: EngineWorker
    tokenizer: Tokenizer
    model_name: str
    max_body_bytes: int
    created: int

    def check_model(self, body: schemas.GenerationRequest) -> None:
        if body.model != self.model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")
        body.check_supported()

    def start(self, body: schemas.GenerationRequest, prompt: list[int], prompt_param: str, max_tokens: int | None,
              default_max_tokens: int | None, stop_tokens, assembler, constraint=None,
              logprobs: int | None = None) -> Generation:
        """Checks the limits of one request and submits it; every refusal is a 4xx before any work. logprobs:
        how many alternatives each token's logprobs list (None: no logprobs)."""
        max_len = self.worker.engine.max_len
        room = max_len - len(prompt)
        if room < 1:
            raise APIError(400, f"the prompt has {len(prompt)} tokens, which leaves no room in this server's "
                                f"context of {max_len} tokens", param=prompt_param,
                           code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(room, default_max_tokens or room)
        elif max_tokens > room:
            raise APIError(400, f"the prompt's {len(prompt)} tokens + max_tokens {max_tokens} exceed this server's "
                                f"context of {max_len} tokens", param="max_tokens",
                           code="context_length_exceeded")
        try:
            params = SamplingParams(max_new_tokens=max_tokens, seed=body.seed,
                                    temperature=1.0 if body.temperature is None else body.temperature,
                                    top_p=1.0 if body.top_p is None else body.top_p,
                                    presence_penalty=body.presence_penalty or 0.0,
                                    frequency_penalty=body.frequency_penalty or 0.0,
                                    logit_bias=body.token_bias(), logprobs=logprobs)
        except ValueError as e:
            raise APIError(400, str(e), param=sampling_param_name(str(e))) from None
        try:
            stream = self.worker.submit(prompt, params, stop_tokens, constraint)
        except ValueError as e:
            raise APIError(400, str(e), param="logit_bias" if "logit_bias" in str(e) else prompt_param) from None
        return Generation(stream, assembler, len(prompt))


class Generation:
    """One submitted request: its tokens read through its assembler into deltas."""

    def __init__(self, stream: TokenStream, assembler: ChatAssembler | TextAssembler, prompt_tokens: int):
        self.stream, self.assembler = stream, assembler
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0
        self.logprobs: list = []  # (token id, TokenLogprobs) of the answer's tokens so far, when asked for

    async def deltas(self) -> AsyncIterator[tuple[Delta, str | None]]:
        """(text delta, finish reason) pairs; the reason comes with the last one."""
        request = self.stream.request
        async for token in self.stream:
            drawn = self.completion_tokens
            self.completion_tokens += 1
            delta = self.assembler.feed(token)
            if request.params.logprobs is not None and self.assembler.answer_token(token):
                # The engine recorded the token's logprobs before handing the token over.
                delta.logprobs.append((token, request.logprobs[drawn]))
                self.logprobs.append(delta.logprobs[-1])
            if self.assembler.stopped:  # a stop string, or a tool call that ends the reply
                yield delta, self.assembler.finish_reason("stop")
                return
            yield delta, None
        delta = self.assembler.finish()
        yield delta, self.assembler.finish_reason(_FINISH_REASONS.get(self.stream.request.stats.stopped_by, "stop"))

    async def collect(self) -> tuple[str, str, str]:
        """(answer, reasoning, finish reason) of the whole reply."""
        content, reasoning, finish = [], [], "stop"
        try:
            async for delta, reason in self.deltas():
                content.append(delta.content)
                reasoning.append(delta.reasoning)
                finish = reason or finish
        finally:
            self.close()
        return "".join(content), "".join(reasoning), finish

    def close(self) -> None:
        """Frees the slot now if the request is still running (stopped early, failed or abandoned)."""
        self.stream.cancel()

    def usage(self) -> dict:
        return schemas.usage(self.prompt_tokens, self.completion_tokens)


class EventStream(StreamingResponse):
    """`events` of `gen` as server-sent events, one `data:` line per object, then `data: [DONE]`."""

    def __init__(self, gen: Generation, events: AsyncIterator[dict]):
        super().__init__(self._lines(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._gen = gen

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the response ends: the client went away (the response task is cancelled, maybe before
            # the first event), an error, or done. Frees the slot if the request still runs.
            self._gen.close()

    @staticmethod
    async def _lines(events: AsyncIterator[dict]) -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"
        except Exception as e:  # the headers are out: report the failure in the stream itself
            yield f"data: {json.dumps(server_error(e).body())}\n\n"
        yield "data: [DONE]\n\n"


async def read_json(request, limit: int):
    """The parsed body; a 413 as soon as it is known to exceed `limit` bytes, a 400 if it is no JSON."""
    too_big = APIError(413, f"the request body exceeds this server's limit of {limit} bytes",
                       code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise too_big
    try:
        return json.loads(data)
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
