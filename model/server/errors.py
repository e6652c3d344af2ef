"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with their status, and the app's handlers
that turn every exception into one."""
from __future__ import annotations


class APIError(Exception):
    """A request the server refuses; the handlers in `app` turn it into a JSON error response."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def sampling_param_name(message: str) -> str | None:
    """The request field a `SamplingParams` ValueError is about (its first named problem)."""
    wire = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
            "logit_bias": "logit_bias", "logprobs": "logprobs"}
    found = [(message.find(name), field) for name, field in wire.items() if name in message]
    return min(found)[1] if found else None


def server_error(e: Exception) -> APIError:
    return APIError(500, f"generation failed: {e}", type="server_error")


def install_error_handlers(app) -> None:
    """Every error, FastAPI's own 404/405 included, as an OpenAI error object."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def api_error(_request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request, e: Exception):
        return JSONResponse(server_error(e).body(), status_code=500)
