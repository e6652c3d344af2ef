"""One request's generation as a response sees it: the prompt tokenised off the event loop (`tokenize`), the
limits checked and the request submitted (`start`), its tokens read back through an assembler
(`Generation`), and server-sent events (`EventStream`). Shared by every protocol module."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.responses import StreamingResponse

from ..runtime.sampling import SamplingParams
from ..tokenizer import Tokenizer
from . import schemas
from .assembly import ChatAssembler, Delta, TextAssembler
from .batcher import EngineWorker, TokenStream
from .body import offload, strings
from .errors import APIError, internal_error, sampling_param_name

_FINISH_REASONS = {"stop": "stop", "length": "length"}


@dataclass
class ServerContext:
    """What every protocol module's routes share: the engine worker, the tokenizer and the server's settings."""

    worker: EngineWorker
    tokenizer: Tokenizer
    model_name: str
    created: int
    default_max_tokens: int  # for a chat request that sets no limit, rather than all the context left
    max_token_bytes: int  # the tokenizer's: found at startup, as it takes a scan of the vocabulary

    def check_model(self, body: schemas.GenerationRequest) -> None:
        if body.model != self.model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")
        body.check_supported()

    async def tokenize(self, param: str, text, fn, *args, **kwargs) -> list[int]:
        """fn(*args, **kwargs): the prompt's token ids, made off the event loop; a ValueError from it is a 400
        about `param`. First a cheap bound: `text` (the request field fn tokenises) holds strings of n UTF-8
        bytes in all, so at least n / max_token_bytes tokens; if those cannot fit, no time goes into
        tokenising them."""
        def run() -> list[int]:
            size = sum(len(s.encode()) for _, s in strings(text))
            least = size // self.max_token_bytes
            if least >= self.worker.engine.max_len:
                raise APIError(400, f"{param}: {size} bytes of text make at least {least} tokens, more than this "
                                    f"server's context of {self.worker.engine.max_len} tokens",
                               param=param, code="context_length_exceeded")
            try:
                return fn(*args, **kwargs)
            except ValueError as e:  # a ToolsError names its own field
                raise APIError(400, str(e), param=getattr(e, "param", param)) from None

        return await offload(run)

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

    async def watched_deltas(self, request) -> AsyncIterator[tuple[Delta, str | None]]:
        """`deltas()` for a non-streaming reply: if the client of `request` (a Starlette request whose body was
        read) goes away meanwhile, the request is cancelled and its slot freed; the slot is freed at the end
        in any case."""
        watcher = asyncio.create_task(self._cancel_on_disconnect(request.receive))
        try:
            async for item in self.deltas():
                yield item
        finally:
            watcher.cancel()
            self.close()

    async def collect(self, request) -> tuple[str, str, str]:
        """(answer, reasoning, finish reason) of the whole reply, watched as in `watched_deltas`."""
        content, reasoning, finish = [], [], "stop"
        async for delta, reason in self.watched_deltas(request):
            content.append(delta.content)
            reasoning.append(delta.reasoning)
            finish = reason or finish
        return "".join(content), "".join(reasoning), finish

    async def _cancel_on_disconnect(self, receive) -> None:
        # With the body read, the next ASGI message is http.disconnect: the connection was closed.
        while (await receive())["type"] != "http.disconnect":
            pass
        self.close()

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
        except APIError as e:  # the headers are out: report the failure in the stream itself
            yield f"data: {json.dumps(e.body())}\n\n"
        except Exception as e:
            yield f"data: {json.dumps(internal_error(e).body())}\n\n"
        yield "data: [DONE]\n\n"

