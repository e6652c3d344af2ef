"""The wire format: request bodies (validated with pydantic) and the response objects OpenAI clients read."""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError

MAX_STOP_STRINGS = 4  # as OpenAI's API


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """Fields both endpoints share. Unknown fields are ignored, as clients send many; None means the default."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None  # range checks are SamplingParams', so the server and the engine agree
    top_p: float | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS or not all(stops):
            raise APIError(400, f"stop takes at most {MAX_STOP_STRINGS} non-empty strings", param="stop")
        return stops

    def check_supported(self) -> None:
        if self.n not in (None, 1):
            raise APIError(400, f"only n=1 is supported, got n={self.n}", param="n")


class ChatCompletionRequest(GenerationRequest):
    messages: list = Field(min_length=1)  # each message is checked by harmony.render
    max_completion_tokens: int | None = Field(None, ge=1)
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    tools: list | None = None  # tools and tool_choice are checked by tool_calls.plan_tools
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(GenerationRequest):
    prompt: str | list[int]  # text, or token ids


def parse_body(model_cls: type[BaseModel], data) -> BaseModel:
    """The request, or a 400 naming the first field at fault."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        # param names the top-level field; the message says where inside it (e.g. which member of a union).
        raise APIError(400, f"{where}: {first['msg']}" if where else first["msg"],
                       param=str(first["loc"][0]) if first["loc"] else None) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_message(content: str, reasoning: str, tool_calls: list[dict] = ()) -> dict:
    """The assistant's message; content is null beside tool calls when they come with no text. The reasoning
    goes in `reasoning_content` (vLLM's field) and `reasoning` (OpenRouter's and Ollama's), left out when there
    is none (some clients fail on null); the openai client exposes them as extra attributes."""
    message = {"role": "assistant", "content": content or (None if tool_calls else "")}
    if tool_calls:
        message["tool_calls"] = [{"id": c["id"], "type": "function", "function": dict(c["function"])}
                                 for c in tool_calls]
    if reasoning:
        message["reasoning_content"] = message["reasoning"] = reasoning
    return message


def chat_completion(id: str, model: str, message: dict, finish_reason: str, usage: dict) -> dict:
    return {"id": id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage}


def chat_chunk(id: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(id: str, model: str, object: str, usage: dict) -> dict:
    """The last chunk of a stream asked for with `stream_options.include_usage`: usage and no choice."""
    return {"id": id, "object": object, "created": int(time.time()), "model": model, "choices": [], "usage": usage}


def text_completion(id: str, model: str, text: str, finish_reason: str | None, usage: dict | None = None) -> dict:
    """A `text_completion`: the whole reply, or in a stream one chunk of it (the same object, as OpenAI's)."""
    body = {"id": id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if usage:
        body["usage"] = usage
    return body
