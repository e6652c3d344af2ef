"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with a 4xx status."""
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
    wire = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}
    found = [(message.find(name), field) for name, field in wire.items() if name in message]
    return min(found)[1] if found else None
