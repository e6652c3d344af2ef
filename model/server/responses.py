"""POST /v1/responses: OpenAI's Responses API over harmony (the API gpt-oss was released with), streamed or not,
with function tools; GET /v1/responses/{id} reads a stored response back.

The input (a string, or items: messages, `function_call`, `function_call_output`, `reasoning`) becomes a Chat
Completions conversation for harmony.render, after `instructions` and the conversation of
`previous_response_id`. The reply is assembled as in chat_completions (ChatAssembler) and its deltas become
output items, a `reasoning` item (its text as `reasoning_text` content), a `message` (`output_text`) and a
`function_call` per call, streamed as the events the openai SDK parses: `response.created`,
`response.in_progress`, per item `response.output_item.added`, its content part and text deltas (or
function-call argument deltas) and their `.done` events, then `response.completed` (or
`response.incomplete` at the token limit). Responses are kept for `previous_response_id` in a bounded
in-memory store (the last `STORED_RESPONSES`; `store: false` keeps one out).
"""
from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from pydantic import Field

from .. import tool_calls
from ..harmony_tools import ToolsError
from . import schemas, structured
from .assembly import ChatAssembler, Delta
from .errors import APIError
from .body import read_json
from .generation import EventStream, Generation, ServerContext

STORED_RESPONSES = 256
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high"}


class ResponsesRequest(schemas.GenerationRequest):
    """The body of POST /v1/responses (unknown fields are ignored, as for the other endpoints)."""

    input: str | list
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict | None = None
    text: dict | None = None
    background: bool | None = None
    conversation: str | dict | None = None
    truncation: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.background:
            raise APIError(400, "background responses are not supported by this server", param="background")
        if self.conversation is not None:
            raise APIError(400, "conversations are not supported by this server: use previous_response_id",
                           param="conversation")
        if self.truncation not in (None, "disabled"):
            raise APIError(400, f"truncation {self.truncation!r} is not supported: only 'disabled'",
                           param="truncation")
        if self.text is not None and not isinstance(self.text, dict):
            raise APIError(400, "text must be an object, e.g. {'format': {'type': 'json_schema', ...}}", param="text")

    def text_format(self) -> dict | None:
        return (self.text or {}).get("format")

    def effort(self) -> str:
        effort = (self.reasoning or {}).get("effort") or "medium"
        if effort not in _EFFORTS:
            raise APIError(400, f"reasoning.effort must be one of {', '.join(_EFFORTS)}, got {effort!r}",
                           param="reasoning")
        return _EFFORTS[effort]


def add_routes(v1: APIRouter, ctx: ServerContext) -> None:
    stored: OrderedDict[str, tuple[list[dict], dict]] = OrderedDict()  # id -> (conversation, response)

    @v1.post("/responses", openapi_extra=schemas.openapi_body(ResponsesRequest))
    async def create_response(request: Request):
        body = schemas.parse_body(ResponsesRequest, await read_json(request))
        ctx.check_model(body)
        history = []
        if body.previous_response_id is not None:
            if body.previous_response_id not in stored:
                raise APIError(400, f"previous_response_id {body.previous_response_id!r} is not found: this server "
                                    f"keeps its last {STORED_RESPONSES} stored responses in memory",
                               param="previous_response_id")
            history = stored[body.previous_response_id][0]
        conversation = history + input_messages(body.input)
        effort = body.effort()
        instructions = [{"role": "developer", "content": body.instructions}] if body.instructions else []
        chat_tools = [_chat_tool(i, tool) for i, tool in enumerate(body.tools or [])]
        final, section = structured.format_rule(body.text_format(), "text.format", flat=True)
        try:
            plan = tool_calls.plan_tools(chat_tools, body.tool_choice)
        except ToolsError as e:
            raise APIError(400, str(e), param=e.param) from None

        def render() -> list[int]:
            try:
                return plan.prompt(ctx.tokenizer, instructions + conversation, reasoning=effort,
                                   response_format=section)
            except ToolsError as e:  # the items behind `messages` came in as `input`
                raise ToolsError(str(e), "input" if e.param == "messages" else e.param) from None

        prompt = await ctx.tokenize("input", [instructions, conversation], render)
        parallel = bool(body.parallel_tool_calls and plan.tools)
        assembler = ChatAssembler(ctx.tokenizer, prefix=plan.prefix_ids(ctx.tokenizer), parallel_calls=parallel,
                                  functions=plan.functions)
        max_tokens = body.max_output_tokens or body.max_tokens
        # The Responses API's function tools are strict unless they say otherwise.
        constraint = await structured.reply_constraint(ctx, plan, final=final, parallel=parallel,
                                                       max_tokens=max_tokens, prompt_len=len(prompt),
                                                       strict_default=True, format_param="text")
        gen = ctx.start(body, prompt, "input", max_tokens, ctx.default_max_tokens,
                        tool_calls.stop_tokens(ctx.tokenizer, parallel), assembler, constraint)
        response = _response(f"resp_{uuid.uuid4().hex}", ctx.model_name, body, effort)

        def done(output: _Output, finish: str) -> dict:
            """The whole response, stored for previous_response_id."""
            final = output.response(response, finish, gen.usage(), assembler.reply.reasoning_tokens)
            if body.store is not False:
                stored[final["id"]] = (conversation + assembler.reply.messages(), final)
                while len(stored) > STORED_RESPONSES:
                    stored.popitem(last=False)
            return final

        if body.stream:
            return _ResponseEvents(gen, _events(gen, response, done))
        output = _Output()
        finish = "stop"
        async for delta, reason in gen.watched_deltas(request):
            output.add(delta)
            finish = reason or finish
        output.close(finish)
        return done(output, finish)

    @v1.get("/responses/{response_id}")
    async def get_response(response_id: str):
        if response_id not in stored:
            raise APIError(404, f"no stored response {response_id!r}", param="response_id", code="not_found")
        return stored[response_id][1]


def input_messages(items) -> list[dict]:
    """Responses API input (a string, or a list of items) as Chat Completions messages for harmony.render."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise APIError(400, f"{where} must be an object, got {type(item).__name__}", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise APIError(400, f"{where}.role must be user, system, developer or assistant, got {role!r}",
                               param="input")
            message = {"role": role, "content": _text(item.get("content"), f"{where}.content")}
            if role == "assistant" and item.get("phase") == "commentary":
                message["channel"] = "commentary"
            messages.append(message)
        elif kind == "function_call":
            call = {"id": _field(item, "call_id", where), "type": "function",
                    "function": {"name": _field(item, "name", where), "arguments": item.get("arguments", "")}}
            last = messages[-1] if messages else {}
            if last.get("role") == "assistant" and (last.get("tool_calls") or isinstance(last.get("content"), str)):
                # calls after the assistant's text: that text is their preamble, as in Chat Completions
                last["tool_calls"] = last.get("tool_calls", []) + [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _field(item, "call_id", where),
                             "content": _text(item.get("output"), f"{where}.output")})
        elif kind == "reasoning":
            text = _reasoning_text(item, where)
            if text:
                messages.append({"role": "assistant", "content": None, "reasoning_content": text})
        else:
            raise APIError(400, f"{where}.type {kind!r} is not supported: messages, function_call, "
                                f"function_call_output and reasoning items are", param="input")
    return messages


def _field(item: dict, name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise APIError(400, f"{where}.{name} must be a non-empty string", param="input")
    return value


def _reasoning_text(item: dict, where: str) -> str:
    """A reasoning item's text: its `content` parts' (reasoning_text), else its `summary` parts' (summary_text).
    Each is a list of `{"type", "text": str}` objects; anything else is a 400, never text silently dropped."""
    texts = {}
    for field in ("content", "summary"):
        parts = item.get(field)
        if parts is None:
            continue
        if not isinstance(parts, list):
            raise APIError(400, f"{where}.{field} must be a list of {{'type': 'reasoning_text', 'text': str}} "
                                f"parts, got {type(parts).__name__}", param="input")
        for k, part in enumerate(parts):
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise APIError(400, f"{where}.{field}[{k}] must be an object with a string 'text', got "
                                    f"{part!r:.80}", param="input")
        texts[field] = "".join(part["text"] for part in parts)
    return texts.get("content") or texts.get("summary", "")


def _text(content, where: str) -> str:
    """A message's text: a string, or text parts (input_text, output_text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text")
                    and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(400, f"{where}: only text parts are supported, got {kind!r}", param="input")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"{where} must be a string or a list of text parts", param="input")


def _chat_tool(index: int, tool) -> dict:
    """A Responses API function tool (`{"type": "function", "name", "description", "parameters"}`) in the
    Chat Completions shape harmony reads."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise APIError(400, f"tools[{index}].type {kind!r} is not supported: only 'function' tools are",
                       param="tools")
    return {"type": "function",
            "function": {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}}


def _response(response_id: str, model: str, body: ResponsesRequest, effort: str) -> dict:
    """The response object before its output: what a `response.created` event carries."""
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "error": None, "incomplete_details": None, "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens, "model": model, "output": [],
        "parallel_tool_calls": bool(body.parallel_tool_calls), "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": effort, "summary": None}, "store": body.store is not False,
        "temperature": body.temperature, "top_p": body.top_p, "text": {"format": body.text_format() or {"type": "text"}},
        "tool_choice": body.tool_choice or "auto", "truncation": "disabled",
        "tools": [{"strict": None, "description": None, "parameters": None, **tool} for tool in body.tools or []],
        "metadata": body.metadata or {}, "usage": None,
    }


class _Output:
    """Deltas into output items (`items`), with the stream events that build them (`add` returns them)."""

    def __init__(self):
        self.items: list[dict] = []
        self._sequence = itertools.count(2)  # after response.created and response.in_progress
        self._text: list[str] = []  # the open item's text so far

    def event(self, kind: str, **fields) -> dict:
        return {"type": kind, "sequence_number": next(self._sequence), **fields}

    def add(self, delta: Delta) -> list[dict]:
        events = []
        if delta.reasoning:
            events += self._append("reasoning", delta.reasoning)
        if delta.content:
            events += self._append("message", delta.content)
        for piece in delta.tool_calls:
            if "id" in piece:  # a call starts
                events += self._close()
                item = {"id": f"fc_{uuid.uuid4().hex[:24]}", "type": "function_call", "status": "in_progress",
                        "call_id": piece["id"], "name": piece["function"]["name"], "arguments": ""}
                events += self._open(item)
            else:
                events += self._append("function_call", piece["function"]["arguments"])
        return events

    def close(self, finish: str) -> list[dict]:
        """Closes the last item: `incomplete` if the token limit cut it (finish "length")."""
        return self._close("incomplete" if finish == "length" else "completed")

    def response(self, response: dict, finish: str, usage: dict, reasoning_tokens: int) -> dict:
        """The whole response: `response` (as created) with the output items and the usage."""
        incomplete = finish == "length"
        return {**response, "status": "incomplete" if incomplete else "completed",
                "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                "output": self.items,
                "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                          "total_tokens": usage["total_tokens"],
                          "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": reasoning_tokens}}}

    def _open(self, item: dict) -> list[dict]:
        self.items.append(item)
        self._text = []
        events = [self.event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item))]
        part = _part(item["type"], "")
        if part is not None:
            events.append(self.event("response.content_part.added", item_id=item["id"], output_index=len(self.items)
                                     - 1, content_index=0, part=part))
        return events

    def _append(self, kind: str, text: str) -> list[dict]:
        events = []
        if not self.items or self.items[-1]["type"] != kind or self.items[-1]["status"] != "in_progress":
            events += self._close()
            item_id = f"{'rs' if kind == 'reasoning' else 'msg'}_{uuid.uuid4().hex[:24]}"
            item = {"id": item_id, "type": kind, "status": "in_progress",
                    **({"summary": [], "content": []} if kind == "reasoning" else {"role": "assistant", "content": []})}
            events += self._open(item)
        item = self.items[-1]
        self._text.append(text)
        where = {"item_id": item["id"], "output_index": len(self.items) - 1}
        if kind == "function_call":
            return events + [self.event("response.function_call_arguments.delta", **where, delta=text)]
        if kind == "reasoning":
            return events + [self.event("response.reasoning_text.delta", **where, content_index=0, delta=text)]
        return events + [self.event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[])]

    def _close(self, status: str = "completed") -> list[dict]:
        if not self.items or self.items[-1]["status"] != "in_progress":
            return []
        item, text = self.items[-1], "".join(self._text)
        where = {"item_id": item["id"], "output_index": len(self.items) - 1}
        item["status"] = status
        if item["type"] == "function_call":
            item["arguments"] = text
            events = [self.event("response.function_call_arguments.done", **where, name=item["name"], arguments=text)]
        else:
            part = _part(item["type"], text)
            item["content"] = [part]
            done = "response.reasoning_text.done" if item["type"] == "reasoning" else "response.output_text.done"
            events = [self.event(done, **where, content_index=0, text=text,
                                 **({"logprobs": []} if item["type"] == "message" else {})),
                      self.event("response.content_part.done", **where, content_index=0, part=part)]
        return events + [self.event("response.output_item.done", output_index=where["output_index"], item=dict(item))]


def _part(kind: str, text: str) -> dict | None:
    if kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    if kind == "message":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return None


async def _events(gen: Generation, response: dict, done) -> AsyncIterator[dict]:
    output = _Output()
    yield {"type": "response.created", "sequence_number": 0, "response": response}
    yield {"type": "response.in_progress", "sequence_number": 1, "response": response}
    finish = "stop"
    async for delta, reason in gen.deltas():
        for event in output.add(delta):
            yield event
        finish = reason or finish
    for event in output.close(finish):
        yield event
    final = done(output, finish)
    kind = "response.incomplete" if finish == "length" else "response.completed"
    yield output.event(kind, response=final)


class _ResponseEvents(EventStream):
    """Server-sent events as the Responses API sends them: `event: {type}` then its data, no `[DONE]`."""

    @staticmethod
    async def _lines(events: AsyncIterator[dict]) -> AsyncIterator[str]:
        sequence = 0
        try:
            async for event in events:
                sequence = event["sequence_number"]
                yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
        except Exception as e:  # the headers are out: report the failure in the stream itself
            error = {"type": "error", "sequence_number": sequence + 1, "code": "server_error", "message": str(e),
                     "param": None}
            yield f"event: error\ndata: {json.dumps(error)}\n\n"
