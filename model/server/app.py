"""The ASGI app: the shared engine worker, authentication, errors, and each protocol module's routes.

`create_app` builds the engine and its worker thread (started and stopped with the app's lifespan) and
mounts `/v1/models`, `/v1/stats`, `/metrics` and the protocol modules (`chat_completions`, `completions`,
`responses`). Every request first passes `security.RequestGuard` (Host, Content-Type, body size and read
time) and is counted for the metrics. A handler checks the request, renders its prompt, submits it to the
worker and reads the new tokens back through an assembler, either all at once or as server-sent events
(`generation`). Whatever ends a response early (a stop string, an error, a client that went away) cancels
its request, so its slot goes to the next one.
"""
from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Iterable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from ..runtime import grammar
from ..runtime.engine import Engine
from ..tokenizer import Tokenizer
from . import chat_completions, completions, responses
from .batcher import EngineWorker
from .errors import APIError, install_error_handlers
from .generation import ServerContext
from .metrics import CONTENT_TYPE, CountResponses, Metrics
from .security import RequestGuard

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_QUEUE = 256  # requests waiting for a slot; more get a 429
DEFAULT_MAX_TOKENS = 4096  # a chat reply's limit when the request sets none: reasoning included
DEFAULT_READ_TIMEOUT = 30.0  # seconds for a request's body (and, in `serving`, for its headers)


def create_app(model, tokenizer: Tokenizer, *, model_name: str = "gpt-oss", api_key: str | None = None,
               max_batch: int = 8, max_len: int = 4096, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_queue: int = DEFAULT_MAX_QUEUE, default_max_tokens: int = DEFAULT_MAX_TOKENS,
               read_timeout: float = DEFAULT_READ_TIMEOUT, allowed_hosts: Iterable[str] = (),
               cors_origins: Iterable[str] = (), docs: bool = False) -> FastAPI:
    """The server for `model`, announced as `model_name`. With `api_key`, every route wants
    `Authorization: Bearer <api_key>` (/v1, /metrics and, with `docs`, the OpenAPI pages). Bodies over
    `max_body_bytes` get a 413; more than `max_queue` requests waiting, a 429. `allowed_hosts`: Host names
    accepted besides loopback names and IP addresses ("*": any). `cors_origins`: web origins whose pages
    may call the API (none by default)."""
    metrics = Metrics()
    # Penalties never count the chat format's control tokens.
    worker = EngineWorker(Engine(model, max_batch=max_batch, max_len=max_len, unpenalized=tokenizer.special_ids),
                          max_queue=max_queue, metrics=metrics)
    metrics.gauges += [
        ("gpt_oss_queue_depth", "Requests waiting for a slot", worker.queued),
        ("gpt_oss_running_requests", "Requests in the running batch", worker.running),
        ("gpt_oss_batch_slots", "Slots of the running batch (--max-batch)", lambda: max_batch)]
    ctx = ServerContext(worker, tokenizer, model_name, created=int(time.time()),
                        default_max_tokens=default_max_tokens, max_token_bytes=tokenizer.max_token_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        grammar.warm_up(tokenizer, model.config.vocab_size)  # structured outputs' tokenizer view, ~10 s for o200k
        yield
        worker.stop()

    # No redirect from /v1/models/ to /v1/models: its Location would name whatever host the request did.
    app = FastAPI(title="gpt-oss-triton", lifespan=lifespan, redirect_slashes=False, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.worker = worker
    install_error_handlers(app)

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
                "data": [{"id": model_name, "object": "model", "created": ctx.created, "owned_by": "gpt-oss-triton"}]}

    @v1.get("/stats")
    async def stats():
        """Engine counters: `steps` (forward passes) below the tokens made shows requests were batched."""
        return worker.stats()

    chat_completions.add_routes(v1, ctx)
    completions.add_routes(v1, ctx)
    responses.add_routes(v1, ctx)
    app.include_router(v1)

    @app.get("/metrics", dependencies=[Depends(authorize)], include_in_schema=False)
    async def prometheus_metrics():
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    if docs:
        _add_docs(app, authorize)

    # The last added runs first: responses are counted, then requests checked, then CORS.
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(RequestGuard, allowed_hosts=allowed_hosts, max_body_bytes=max_body_bytes,
                       read_timeout=read_timeout)
    app.add_middleware(CountResponses, metrics=metrics,
                       paths=lambda: [getattr(route, "path", "") for route in [*app.routes, *v1.routes]])
    return app


def _add_docs(app: FastAPI, authorize) -> None:
    """/openapi.json, /docs and /redoc, behind the API key like every other route."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    guarded = APIRouter(dependencies=[Depends(authorize)], include_in_schema=False)

    @guarded.get("/openapi.json")
    async def openapi():
        return app.openapi()

    @guarded.get("/docs")
    async def swagger():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API")

    @guarded.get("/redoc")
    async def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} API")

    app.include_router(guarded)
