"""The wire format: request bodies (validated with pydantic) and the response objects OpenAI clients read."""
from __future__ import annotations

import re
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_TOP_LOGPROBS = 20  # Chat Completions' top_logprobs, as OpenAI's
MAX_COMPLETION_LOGPROBS = 5  # Completions' logprobs, as OpenAI's
LOGPROB_FLOOR = -9999.0  # OpenAI's stand-in for -inf: a token the sampler could not have drawn
_TOKEN_ID = re.compile(r"0|[1-9][0-9]{0,18}")


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
    presence_penalty: float | None = None  # ranges are SamplingParams' too
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string, JSON keys are) -> bias
    response_format: dict | None = None  # checked by structured.format_rule

    def token_bias(self) -> dict[int, float]:
        """logit_bias with its keys as token ids; a 400 for a key that is not one written canonically (ASCII
        digits, no sign, space or leading zero: int() would take " 7", "+7", "1_0" and "٧", and "07" beside "7"
        would name one id twice)."""
        bad = [k for k in self.logit_bias or {} if not _TOKEN_ID.fullmatch(k)]
        if bad:
            raise APIError(400, f"logit_bias keys must be token ids written as decimal integers (\"7\"), got "
                                f"{bad[0]!r:.40}", param="logit_bias")
        return {int(k): v for k, v in (self.logit_bias or {}).items()}

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
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def logprobs_wanted(self) -> int | None:
        """How many alternatives each token's logprobs list (None: no logprobs)."""
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(GenerationRequest):
    # Text (special-token text such as "<|endoftext|>" in it becomes that control token, as tiktoken's
    # allowed_special="all" would) or token ids (exactly those ids).
    prompt: str | list[int]
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = None  # the three below: refused unless their defaults, rather than ignored
    echo: bool | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of not in (None, 1):
            raise APIError(400, f"only best_of=1 is supported, got best_of={self.best_of}", param="best_of")
        if self.echo:
            raise APIError(400, "echo is not supported by this server: the reply holds the new text only",
                           param="echo")
        if self.suffix:
            raise APIError(400, "suffix (text after the insertion) is not supported by this server", param="suffix")


def parse_body(model_cls: type[BaseModel], data) -> BaseModel:
    """The request, or a 400 naming the first field at fault. Strict: values are checked, not coerced, in
    every model and every model nested in it (max_tokens "4" or true is no integer, stream "yes" no
    boolean), as a client that sends those has a bug the server should not hide."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model_cls.model_validate(data, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        # param names the top-level field; the message says where inside it (e.g. which member of a union).
        raise APIError(400, f"{where}: {first['msg']}" if where else first["msg"],
                       param=str(first["loc"][0]) if first["loc"] else None) from None


def openapi_body(model_cls: type[BaseModel]) -> dict:
    """A route's `openapi_extra` declaring `model_cls` as its JSON body, for schema-driven clients: the routes
    read their bodies themselves (`parse_body`), so FastAPI would declare none. Nested models are inlined."""
    schema = model_cls.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(value):
        if isinstance(value, dict):
            if isinstance(value.get("$ref"), str):
                return inline(defs[value["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in value.items()}
        return [inline(v) for v in value] if isinstance(value, list) else value

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


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


def chat_completion(id: str, model: str, message: dict, finish_reason: str, usage: dict,
                    logprobs: dict | None = None) -> dict:
    return {"id": id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}],
            "usage": usage}


def chat_chunk(id: str, model: str, delta: dict, finish_reason: str | None = None,
               logprobs: dict | None = None) -> dict:
    return {"id": id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def _token(tokenizer, token: int, logprob: float) -> dict:
    raw = tokenizer.token_bytes(token)
    # A token that splits a character has no text of its own: its bytes, escaped (its `bytes` are exact).
    return {"token": raw.decode("utf-8", "backslashreplace"), "logprob": max(logprob, LOGPROB_FLOOR),
            "bytes": list(raw)}


def chat_logprobs(tokenizer, entries) -> dict:
    """Chat Completions' `logprobs` of (token id, TokenLogprobs) entries: each token with its logprob, bytes and
    top alternatives."""
    return {"content": [{**_token(tokenizer, t, lp.logprob), "top_logprobs": [_token(tokenizer, i, v)
                                                                              for i, v in lp.top]}
                        for t, lp in entries], "refusal": None}


def completion_logprobs(tokenizer, entries, offset: int = 0) -> dict:
    """Completions' `logprobs` of (token id, TokenLogprobs) entries: tokens, their logprobs, the top ones
    (the drawn token among them) and each token's offset in the text, counted from `offset`."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t, lp in entries:
        token = _token(tokenizer, t, lp.logprob)
        top = {_token(tokenizer, i, v)["token"]: max(v, LOGPROB_FLOOR) for i, v in lp.top}
        out["tokens"].append(token["token"])
        out["token_logprobs"].append(token["logprob"])
        out["top_logprobs"].append({**top, token["token"]: token["logprob"]})
        out["text_offset"].append(offset)
        offset += len(token["token"])
    return out


def usage_chunk(id: str, model: str, object: str, usage: dict) -> dict:
    """The last chunk of a stream asked for with `stream_options.include_usage`: usage and no choice."""
    return {"id": id, "object": object, "created": int(time.time()), "model": model, "choices": [], "usage": usage}


def text_completion(id: str, model: str, text: str, finish_reason: str | None, usage: dict | None = None,
                    logprobs: dict | None = None) -> dict:
    """A `text_completion`: the whole reply, or in a stream one chunk of it (the same object, as OpenAI's)."""
    body = {"id": id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}
    if usage:
        body["usage"] = usage
    return body
