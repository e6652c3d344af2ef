"""The ASGI app: OpenAI's /v1/models, /v1/chat/completions and /v1/completions over one shared engine.

`create_app` builds the engine and its worker thread (started and stopped with the app's lifespan). A
handler checks the request, renders its prompt, submits it to the worker and reads the new tokens back
through an assembler, either all at once or as server-sent events. Whatever ends a response early (a
stop string, an error, a client that went away) cancels its request, so its slot goes to the next one.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import harmony
from ..runtime.engine import Engine
from ..runtime.sampling import SamplingParams
from ..tokenizer import Tokenizer
from . import schemas
from .assembly import ChatAssembler, Delta, TextAssembler
from .batcher import EngineWorker, TokenStream
from .errors import APIError, sampling_param_name

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions' default max_tokens, as OpenAI's; chat defaults to the context left
_FINISH_REASONS = {"stop": "stop", "length": "length"}


def create_app(model, tokenizer: Tokenizer, *, model_name: str = "gpt-oss", api_key: str | None = None,
               max_batch: int = 8, max_len: int = 4096, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The server for `model`, announced as `model_name`. With `api_key`, every /v1 route wants
    `Authorization: Bearer <api_key>`. Bodies over `max_body_bytes` get a 413."""
    worker = EngineWorker(Engine(model, max_batch=max_batch, max_len=max_len))
    created = int(time.time())
    chat_stops = harmony.stop_tokens_for_assistant_actions(tokenizer)
    text_stops = {tokenizer.token_id("<|endoftext|>")}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="gpt-oss-triton", lifespan=lifespan)
    app.state.worker = worker
    _install_error_handlers(app)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.get("/models")
    async def list_models():
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "gpt-oss-triton"}]}

    @v1.get("/stats")
    async def stats():
        """Engine counters: `steps` (forward passes) below the tokens made shows requests were batched."""
        return worker.stats()

    def start(body: schemas.GenerationRequest, prompt: list[int], prompt_param: str, max_tokens: int | None,
              default_max_tokens: int | None, stop_tokens, assembler) -> _Generation:
        """Checks the limits of one request and submits it; every refusal is a 4xx before any work."""
        room = worker.engine.max_len - len(prompt)
        if room < 1:
            raise APIError(400, f"the prompt has {len(prompt)} tokens, which leaves no room in this server's "
                                f"context of {worker.engine.max_len} tokens", param=prompt_param,
                           code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(room, default_max_tokens or room)
        elif max_tokens > room:
            raise APIError(400, f"the prompt's {len(prompt)} tokens + max_tokens {max_tokens} exceed this server's "
                                f"context of {worker.engine.max_len} tokens", param="max_tokens",
                           code="context_length_exceeded")
        try:
            params = SamplingParams(max_new_tokens=max_tokens, seed=body.seed,
                                    temperature=1.0 if body.temperature is None else body.temperature,
                                    top_p=1.0 if body.top_p is None else body.top_p)
        except ValueError as e:
            raise APIError(400, str(e), param=sampling_param_name(str(e))) from None
        try:
            stream = worker.submit(prompt, params, stop_tokens)
        except ValueError as e:
            raise APIError(400, str(e), param=prompt_param) from None
        return _Generation(stream, assembler, len(prompt))

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        body = schemas.parse_body(schemas.ChatCompletionRequest, await _read_json(request, max_body_bytes))
        _check_request(body, model_name)
        try:
            prompt = harmony.render(tokenizer, body.messages, reasoning=body.reasoning_effort or "medium")
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        assembler = ChatAssembler(tokenizer, body.stop_strings())
        gen = start(body, prompt, "messages", body.max_completion_tokens or body.max_tokens, None, chat_stops,
                    assembler)
        reply_id = schemas.new_id("chatcmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _EventStream(gen, _chat_events(gen, reply_id, model_name, include_usage))
        content, reasoning, finish = await gen.collect()
        return schemas.chat_completion(reply_id, model_name, schemas.chat_message(content, reasoning), finish,
                                       gen.usage())

    @v1.post("/completions")
    async def completions(request: Request):
        body = schemas.parse_body(schemas.CompletionRequest, await _read_json(request, max_body_bytes))
        _check_request(body, model_name)
        prompt = tokenizer.encode(body.prompt) if isinstance(body.prompt, str) else body.prompt
        assembler = TextAssembler(tokenizer, body.stop_strings(), end_tokens=text_stops)
        gen = start(body, prompt, "prompt", body.max_tokens, DEFAULT_COMPLETION_TOKENS, text_stops, assembler)
        reply_id = schemas.new_id("cmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _EventStream(gen, _text_events(gen, reply_id, model_name, include_usage))
        text, _, finish = await gen.collect()
        return schemas.text_completion(reply_id, model_name, text, finish, gen.usage())

    app.include_router(v1)
    return app


class _Generation:
    """One submitted request: its tokens read through its assembler into deltas."""

    def __init__(self, stream: TokenStream, assembler: ChatAssembler | TextAssembler, prompt_tokens: int):
        self.stream, self.assembler = stream, assembler
        self.prompt_tokens, self.completion_tokens = prompt_tokens, 0

    async def deltas(self) -> AsyncIterator[tuple[Delta, str | None]]:
        """(text delta, finish reason) pairs; the reason comes with the last one."""
        async for token in self.stream:
            self.completion_tokens += 1
            delta = self.assembler.feed(token)
            if self.assembler.stopped:
                yield delta, "stop"
                return
            yield delta, None
        yield self.assembler.finish(), _FINISH_REASONS.get(self.stream.request.stats.stopped_by, "stop")

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


async def _chat_events(gen: _Generation, reply_id: str, model_name: str, include_usage: bool) -> AsyncIterator[dict]:
    yield schemas.chat_chunk(reply_id, model_name, {"role": "assistant", "content": ""})
    async for delta, finish in gen.deltas():
        if delta:
            piece = {"content": delta.content} if delta.content else {}
            if delta.reasoning:
                piece["reasoning_content"] = delta.reasoning
            yield schemas.chat_chunk(reply_id, model_name, piece)
        if finish:
            yield schemas.chat_chunk(reply_id, model_name, {}, finish)
    if include_usage:
        yield schemas.usage_chunk(reply_id, model_name, "chat.completion.chunk", gen.usage())


async def _text_events(gen: _Generation, reply_id: str, model_name: str, include_usage: bool) -> AsyncIterator[dict]:
    async for delta, finish in gen.deltas():
        if delta or finish:
            yield schemas.text_completion(reply_id, model_name, delta.content, finish)
    if include_usage:
        yield schemas.usage_chunk(reply_id, model_name, "text_completion", gen.usage())


class _EventStream(StreamingResponse):
    """`events` of `gen` as server-sent events, one `data:` line per object, then `data: [DONE]`."""

    def __init__(self, gen: _Generation, events: AsyncIterator[dict]):
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
            yield f"data: {json.dumps(_server_error(e).body())}\n\n"
        yield "data: [DONE]\n\n"


def _check_request(body: schemas.GenerationRequest, model_name: str) -> None:
    if body.model != model_name:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {model_name!r}",
                       param="model", code="model_not_found")
    body.check_supported()


async def _read_json(request: Request, limit: int):
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


def _server_error(e: Exception) -> APIError:
    return APIError(500, f"generation failed: {e}", type="server_error")


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, FastAPI's own 404/405 included, as an OpenAI error object."""

    @app.exception_handler(APIError)
    async def api_error(_request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request, e: Exception):
        return JSONResponse(_server_error(e).body(), status_code=500)
