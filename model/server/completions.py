"""POST /v1/completions: OpenAI's legacy text completions (raw text or token ids in, text out)."""
from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from . import schemas
from .assembly import TextAssembler
from .body import read_json
from .generation import EventStream, Generation, ServerContext

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for this endpoint


def add_routes(v1: APIRouter, ctx: ServerContext) -> None:
    stops = {ctx.tokenizer.token_id("<|endoftext|>")}

    @v1.post("/completions")
    async def completions(request: Request):
        body = schemas.parse_body(schemas.CompletionRequest, await read_json(request))
        ctx.check_model(body)
        prompt = (await ctx.tokenize("prompt", body.prompt, ctx.tokenizer.encode, body.prompt)
                  if isinstance(body.prompt, str) else body.prompt)
        assembler = TextAssembler(ctx.tokenizer, body.stop_strings(), end_tokens=stops)
        gen = ctx.start(body, prompt, "prompt", body.max_tokens, DEFAULT_COMPLETION_TOKENS, stops, assembler)
        reply_id = schemas.new_id("cmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(gen, _events(gen, reply_id, ctx.model_name, include_usage))
        text, _, finish = await gen.collect(request)
        return schemas.text_completion(reply_id, ctx.model_name, text, finish, gen.usage())


async def _events(gen: Generation, reply_id: str, model_name: str, include_usage: bool) -> AsyncIterator[dict]:
    async for delta, finish in gen.deltas():
        if delta or finish:
            yield schemas.text_completion(reply_id, model_name, delta.content, finish)
    if include_usage:
        yield schemas.usage_chunk(reply_id, model_name, "text_completion", gen.usage())
