"""POST /v1/completions: OpenAI's legacy text completions (raw text or token ids in, text out).

A string prompt is tokenized with its special-token text turned into those control tokens ("<|start|>" in it
is harmony's token 200006), so a client can write a harmony prompt by hand; to send such text as plain text,
send token ids (`prompt: [ids]`), which are taken exactly. `response_format` (not in OpenAI's Completions API)
holds the text to JSON, then `<|endoftext|>`."""
from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from . import schemas, structured
from .assembly import TextAssembler
from .body import read_json
from .generation import EventStream, Generation, ServerContext

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for this endpoint


def add_routes(v1: APIRouter, ctx: ServerContext) -> None:
    stops = {ctx.tokenizer.token_id("<|endoftext|>")}

    @v1.post("/completions", openapi_extra=schemas.openapi_body(schemas.CompletionRequest))
    async def completions(request: Request):
        body = schemas.parse_body(schemas.CompletionRequest, await read_json(request))
        ctx.check_model(body)
        prompt = (await ctx.tokenize("prompt", body.prompt, ctx.tokenizer.encode, body.prompt)
                  if isinstance(body.prompt, str) else body.prompt)
        assembler = TextAssembler(ctx.tokenizer, body.stop_strings(), end_tokens=stops)
        final, _ = structured.format_rule(body.response_format, "response_format")
        constraint = await structured.text_constraint(ctx, final, len(prompt))
        gen = ctx.start(body, prompt, "prompt", body.max_tokens, DEFAULT_COMPLETION_TOKENS, stops, assembler,
                        constraint, logprobs=body.logprobs)
        reply_id = schemas.new_id("cmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(gen, _events(gen, reply_id, ctx, body.logprobs is not None, include_usage))
        text, _, finish = await gen.collect(request)
        logprobs = None if body.logprobs is None else schemas.completion_logprobs(ctx.tokenizer, gen.logprobs)
        return schemas.text_completion(reply_id, ctx.model_name, text, finish, gen.usage(), logprobs)


async def _events(gen: Generation, reply_id: str, ctx: ServerContext, logprobs: bool,
                  include_usage: bool) -> AsyncIterator[dict]:
    model_name, offset = ctx.model_name, 0
    async for delta, finish in gen.deltas():
        if delta or finish:
            pieces = None
            if logprobs:
                pieces = schemas.completion_logprobs(ctx.tokenizer, delta.logprobs, offset)
                offset += sum(len(t) for t in pieces["tokens"])
            yield schemas.text_completion(reply_id, model_name, delta.content, finish, logprobs=pieces)
    if include_usage:
        yield schemas.usage_chunk(reply_id, model_name, "text_completion", gen.usage())
