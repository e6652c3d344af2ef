"""POST /v1/chat/completions: OpenAI's Chat Completions over harmony, streamed or not, with function tools."""
from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from .. import tool_calls
from ..harmony_tools import ToolsError
from . import schemas, structured
from .assembly import ChatAssembler
from .body import read_json
from .errors import APIError
from .generation import EventStream, Generation, ServerContext


def add_routes(v1: APIRouter, ctx: ServerContext) -> None:
    @v1.post("/chat/completions", openapi_extra=schemas.openapi_body(schemas.ChatCompletionRequest))
    async def chat_completions(request: Request):
        body = schemas.parse_body(schemas.ChatCompletionRequest, await read_json(request))
        ctx.check_model(body)
        final, section = structured.format_rule(body.response_format, "response_format")
        try:
            plan = tool_calls.plan_tools(body.tools, body.tool_choice)
        except ToolsError as e:
            raise APIError(400, str(e), param=e.param) from None
        prompt = await ctx.tokenize("messages", body.messages, plan.prompt, ctx.tokenizer, body.messages,
                                    reasoning=body.reasoning_effort or "medium", response_format=section)
        # More than one call per reply only when asked for: gpt-oss ends its turn at a call (<|call|>).
        parallel = bool(body.parallel_tool_calls and plan.tools)
        assembler = ChatAssembler(ctx.tokenizer, body.stop_strings(), prefix=plan.prefix_ids(ctx.tokenizer),
                                  parallel_calls=parallel, functions=plan.functions)
        max_tokens = body.max_completion_tokens or body.max_tokens
        logprobs = body.logprobs_wanted()
        constraint = await structured.reply_constraint(ctx, plan, final=final, parallel=parallel,
                                                       max_tokens=max_tokens, prompt_len=len(prompt))
        gen = ctx.start(body, prompt, "messages", max_tokens, ctx.default_max_tokens,
                        tool_calls.stop_tokens(ctx.tokenizer, parallel), assembler, constraint, logprobs=logprobs)
        reply_id = schemas.new_id("chatcmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(gen, _events(gen, reply_id, ctx, include_usage))
        content, reasoning, finish = await gen.collect(request)
        message = schemas.chat_message(content, reasoning, assembler.tool_calls)
        return schemas.chat_completion(reply_id, ctx.model_name, message, finish, gen.usage(),
                                       None if logprobs is None else schemas.chat_logprobs(ctx.tokenizer, gen.logprobs))


async def _events(gen: Generation, reply_id: str, ctx: ServerContext, include_usage: bool) -> AsyncIterator[dict]:
    model_name = ctx.model_name
    yield schemas.chat_chunk(reply_id, model_name, {"role": "assistant", "content": ""})
    async for delta, finish in gen.deltas():
        if delta.content or delta.reasoning or delta.logprobs:
            piece = {"content": delta.content} if delta.content else {}
            if delta.reasoning:
                piece["reasoning_content"] = piece["reasoning"] = delta.reasoning
            logprobs = schemas.chat_logprobs(ctx.tokenizer, delta.logprobs) if delta.logprobs else None
            yield schemas.chat_chunk(reply_id, model_name, piece, logprobs=logprobs)
        for call in delta.tool_calls:  # one piece per chunk, as OpenAI streams them
            yield schemas.chat_chunk(reply_id, model_name, {"tool_calls": [call]})
        if finish:
            yield schemas.chat_chunk(reply_id, model_name, {}, finish)
    if include_usage:
        yield schemas.usage_chunk(reply_id, model_name, "chat.completion.chunk", gen.usage())
