"""The ASGI app: the shared engine worker, authentication, errors, and each protocol module's routes.

`create_app` builds the engine and its worker thread (started and stopped with the app's lifespan) and
mounts `/v1/models`, `/v1/stats` and the protocol modules (`chat_completions`, `completions`, `responses`). A
handler checks the request, renders its prompt, submits it to the worker and reads the new tokens back
through an assembler, either all at once or as server-sent events (`generation`). Whatever ends a
response early (a stop string, an error, a client that went away) cancels its request, so its slot goes
to the next one.
"""
from __future__ import annotations

import contextlib
import hmac
import time

from fastapi import APIRouter, Depends, FastAPI, Request

from ..runtime import grammar
from ..runtime.engine import Engine
from ..tokenizer import Tokenizer
from . import chat_completions, completions, responses
from .batcher import EngineWorker
from .errors import APIError, install_error_handlers
from .generation import ServerContext

DEFAULT_MAX_BODY_BYTES = 1 << 20


def create_app(model, tokenizer: Tokenizer, *, model_name: str = "gpt-oss", api_key: str | None = None,
               max_batch: int = 8, max_len: int = 4096, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The server for `model`, announced as `model_name`. With `api_key`, every /v1 route wants
    `Authorization: Bearer <api_key>`. Bodies over `max_body_bytes` get a 413."""
    # Penalties never count the chat format's control tokens.
    worker = EngineWorker(Engine(model, max_batch=max_batch, max_len=max_len, unpenalized=tokenizer.special_ids))
    ctx = ServerContext(worker, tokenizer, model_name, max_body_bytes, created=int(time.time()))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        grammar.warm_up(tokenizer, model.config.vocab_size)  # structured outputs' tokenizer view, ~10 s for o200k
        yield
        worker.stop()

    app = FastAPI(title="gpt-oss-triton", lifespan=lifespan)
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
    return app
