"""Text in, text out: continue a prompt, or answer a harmony chat with its reasoning and its answer apart.

    model = GptOss.from_pretrained("gpt-oss-20b-dir")
    chat(model, [{"role": "user", "content": "Why is the sky blue?"}], reasoning="low")
        -> [{"role": "assistant", "channel": "analysis", "content": ...}, {..., "channel": "final", ...}]
    for channel, text in stream_chat(model, messages): ...      # as the model writes it
    complete(model, "Once upon a time")  /  for text in stream_text(model, prompt): ...

With `tools` (OpenAI function tools) the reply may end in tool calls, returned in OpenAI's shape, so an agent
loop appends the reply and the tools' results to the conversation and asks again:

    reply = chat(model, messages, tools=tools)
        -> [..., {"role": "assistant", "content": None, "tool_calls": [{"id", "type": "function",
                                                                        "function": {"name", "arguments"}}]}]
    messages += reply + [{"role": "tool", "tool_call_id": call["id"], "content": result}, ...]

The tokenizer is the model's own (`model.tokenizer`) unless one is passed. Every limit (context, sampling
parameters, an empty prompt) is checked before any work starts.
"""
from collections.abc import Iterator, Sequence

from .. import tool_calls
from .generate import generate
from .sampling import SamplingParams
from ..tokenizer import StreamDecoder, Tokenizer


def _tokenizer(model, tokenizer: Tokenizer | None) -> Tokenizer:
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer (its directory has no tokenizer.json): pass tokenizer=")
    return tokenizer


class TextStream:
    """Iterate for the new text as it comes (the stop token that ends it left out); `stats` (GenerationStats)
    fills in as it runs."""

    def __init__(self, tokenizer: Tokenizer, generation, stop_tokens: set[int]):
        self._decoder, self._generation, self._stop = StreamDecoder(tokenizer), generation, stop_tokens
        self.stats = generation.stats

    def __iter__(self) -> Iterator[str]:
        for token in self._generation:
            if token in self._stop:
                continue
            text = self._decoder.feed(token)
            if text:
                yield text
        tail = self._decoder.flush()
        if tail:
            yield tail


class ChatStream:
    """Iterate for (channel, text) pieces as the model writes them, and ("tool_calls", piece) for tool calls in
    OpenAI's streamed shape (`{"index", "id", "type": "function", "function": {"name", "arguments": ""}}` when
    a call starts, then `{"index", "function": {"arguments": text}}`); afterwards `messages` holds the reply
    (harmony's messages: reasoning on "analysis", the answer on "final"; calls as an assistant message with
    `tool_calls`), `finish_reason` is "stop", "length" or "tool_calls", and `stats` its GenerationStats.
    A call to a function not in `tools` (or any call without tools) is no tool call: it is left out of the
    pieces and of `messages`, logged, and kept in `dropped_calls` (`{"recipient", "content"}` each)."""

    def __init__(self, reply: tool_calls.ReplyAssembler, generation):
        self._reply, self._generation = reply, generation
        self.stats = generation.stats
        self.messages: list[dict] = []
        self.finish_reason: str | None = None
        self.dropped_calls = reply.dropped

    def __iter__(self) -> Iterator[tuple[str, str | dict]]:
        yield from self._reply.prefix_pieces
        for token in self._generation:
            yield from self._reply.feed(token)
            if self._reply.stopped:  # the reply ended with its calls: generation goes no further
                break
        self._reply.finish()
        self.messages = self._reply.messages()
        self.finish_reason = self._reply.finish_reason("length" if self.stats.stopped_by == "length" else "stop")


def stream_text(model, prompt: str, params: SamplingParams = SamplingParams(), *,
                tokenizer: Tokenizer | None = None) -> TextStream:
    """The continuation of `prompt`, streamed; it ends at `<|endoftext|>` or at the token limit."""
    tok = _tokenizer(model, tokenizer)
    stop = {tok.token_id("<|endoftext|>")}
    return TextStream(tok, generate(model, tok.encode(prompt), params, stop_tokens=stop), stop)


def complete(model, prompt: str, params: SamplingParams = SamplingParams(), *,
             tokenizer: Tokenizer | None = None) -> str:
    return "".join(stream_text(model, prompt, params, tokenizer=tokenizer))


def stream_chat(model, messages: Sequence[dict], params: SamplingParams = SamplingParams(), *,
                reasoning: str = "medium", date=None, tools: Sequence[dict] | None = None, tool_choice="auto",
                parallel_tool_calls: bool = False, tokenizer: Tokenizer | None = None) -> ChatStream:
    """The assistant's reply to `messages` (OpenAI-style dicts, see harmony.render), streamed; it ends at
    `<|return|>`, at a tool call (after the last of them with `parallel_tool_calls`) or at the token limit.
    `tools` and `tool_choice` ("auto", "none", "required" or {"type": "function", "function": {"name"}}) as
    in OpenAI's Chat Completions; "required" and a named function force a call."""
    tok = _tokenizer(model, tokenizer)
    plan = tool_calls.plan_tools(tools, tool_choice)
    prompt = plan.prompt(tok, messages, reasoning=reasoning, date=date)
    parallel = parallel_tool_calls and bool(plan.tools)
    reply = tool_calls.ReplyAssembler(tok, functions=plan.functions, parallel_calls=parallel,
                                      prefix=plan.prefix_ids(tok))
    return ChatStream(reply, generate(model, prompt, params, stop_tokens=tool_calls.stop_tokens(tok, parallel),
                                      constraint=plan.constraint(tok)))


def chat(model, messages: Sequence[dict], params: SamplingParams = SamplingParams(), **kw) -> list[dict]:
    """The reply to `messages` as a list of messages (see ChatStream); takes stream_chat's keywords."""
    stream = stream_chat(model, messages, params, **kw)
    for _ in stream:
        pass
    return stream.messages
