"""POST /v1/chat/completions: OpenAI's Chat Completions over harmony, streamed or not."""
from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from .. import harmony
from . import schemas
from .assembly import ChatAssembler
from .body import read_json
from .generation import EventStream, Generation, ServerContext


def add_routes(v1: APIRouter, ctx: ServerContext) -> None:
    stops = harmony.stop_tokens_for_assistant_actions(ctx.tokenizer)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        body = schemas.parse_body(schemas.ChatCompletionRequest, await read_json(request))
        ctx.check_model(body)
        prompt = await ctx.tokenize("messages", body.messages, harmony.render, ctx.tokenizer, body.messages,
                                    reasoning=body.reasoning_effort or "medium")
        assembler = ChatAssembler(ctx.tokenizer, body.stop_strings())
        gen = ctx.start(body, prompt, "messages", body.max_completion_tokens or body.max_tokens,
                        ctx.default_max_tokens, stops, assembler)
        reply_id = schemas.new_id("chatcmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(gen, _events(gen, reply_id, ctx.model_name, include_usage))
        content, reasoning, finish = await gen.collect(request)
        return schemas.chat_completion(reply_id, ctx.model_name, schemas.chat_message(content, reasoning), finish,
                                       gen.usage())


async def _events(gen: Generation, reply_id: str, model_name: str, include_usage: bool) -> AsyncIterator[dict]:
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
