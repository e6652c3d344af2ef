"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with their status, and the app's handlers
that turn every exception into one. A message never carries internals: an unexpected exception becomes a 500
that quotes a request id, and its traceback goes to the log under that id."""
from __future__ import annotations

import logging
import uuid

log = logging.getLogger(__name__)


class APIError(Exception):
    """A request the server refuses; the handlers in `app` turn it into a JSON error response."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self):
        from starlette.responses import JSONResponse

        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def sampling_param_name(message: str) -> str | None:
    """The request field a `SamplingParams` ValueError is about (its first named problem)."""
    wire = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
            "logit_bias": "logit_bias", "logprobs": "logprobs"}
    found = [(message.find(name), field) for name, field in wire.items() if name in message]
    return min(found)[1] if found else None


def internal_error(e: BaseException) -> APIError:
    """A 500 for an exception the server did not expect: logged with its traceback under a fresh request id,
    which the message quotes instead of the exception's text."""
    request_id = f"req-{uuid.uuid4().hex[:16]}"
    log.error("internal error %s", request_id, exc_info=e)
    # The connection closes after it (the app's exception reaches uvicorn, which then drops the connection):
    # the client is told so rather than finding a keep-alive connection cut.
    return APIError(500, f"internal error (request id {request_id}); the server's log has the details",
                    type="server_error", code="internal_error", headers={"Connection": "close"})


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down: the request was not finished; retry later",
                    type="server_error", code="server_shutting_down")


def install_error_handlers(app) -> None:
    """Every error, FastAPI's own 404/405 included, as an OpenAI error object."""
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    @app.exception_handler(APIError)
    async def api_error(_request, e: APIError):
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):
        return APIError(e.status_code, str(e.detail), headers=e.headers).response()

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_request, _e: ClientDisconnect):  # nobody reads this reply: no traceback in the log
        return APIError(400, "the client went away before sending the whole body").response()

    @app.exception_handler(Exception)
    async def unexpected(_request, e: Exception):
        return internal_error(e).response()
