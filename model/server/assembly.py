"""From generated token ids to the text a response carries, one token at a time.

Streaming and non-streaming responses both go through these classes, so a streamed reply joined up is
the non-streamed one. `ChatAssembler` routes harmony's analysis channel to the reasoning, tool calls to
OpenAI tool-call pieces (tool_calls.ReplyAssembler) and every other channel to the answer; `TextAssembler`
decodes raw text. Both cut the answer at the first stop string, holding back text that may be the start of
one until it is decided.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..tokenizer import StreamDecoder, Tokenizer
from ..tool_calls import ReplyAssembler


@dataclass
class Delta:
    """What one token adds: to the answer (`content`), to the reasoning, and to tool calls (OpenAI's streamed
    pieces: `{"index", "id", "type", "function": {"name", "arguments"}}` when a call starts, then
    `{"index", "function": {"arguments"}}`)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # (token id, TokenLogprobs) of the answer's tokens, if asked

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls or self.logprobs)


class StopMatcher:
    """Finds the first of some stop strings in text that arrives in pieces."""

    def __init__(self, stops: Iterable[str] = ()):
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is now certain to come before any stop string (none once one was found)."""
        if self.stopped:
            return ""
        text = self._held + text
        cuts = [text.find(s) for s in self._stops if s in text]
        if cuts:
            self.stopped, self._held = True, ""
            return text[:min(cuts)]
        # Hold back the longest tail that a stop string starts with: the next piece may complete it.
        keep = max((k for s in self._stops for k in range(1, min(len(s), len(text) + 1))
                    if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The end of the text: what was held back was no stop string after all."""
        held, self._held = self._held, ""
        return held


class ChatAssembler:
    """A harmony completion, token by token: reasoning (analysis channel), tool calls and the answer.

    Text still held in the parser's UTF-8 decoder when a message ends is dropped (harmony.parse would
    turn it into U+FFFD), so the streamed and the assembled text stay equal. `prefix` and `parallel_calls`
    are ReplyAssembler's: the pieces of a forced prefix come with the first token's delta. So are `functions`,
    the declared names: a call to any other is no tool call (dropped and logged).
    """

    def __init__(self, tokenizer: Tokenizer, stop: Iterable[str] = (), *, prefix=(), parallel_calls: bool = False,
                 functions=()):
        self.reply = ReplyAssembler(tokenizer, functions=functions, parallel_calls=parallel_calls, prefix=prefix)
        self._specials = tokenizer.special_ids
        self._stop = StopMatcher(stop)
        self._pending = self._delta(self.reply.prefix_pieces)

    @property
    def stopped(self) -> bool:
        """A stop string ended the answer, or a tool call the reply: generation should stop."""
        return self._stop.stopped or self.reply.stopped

    @property
    def tool_calls(self) -> list[dict]:
        """The reply's tool calls, whole."""
        return self.reply.calls

    def feed(self, token: int) -> Delta:
        delta, self._pending = self._pending, Delta()
        more = self._delta(self.reply.feed(token))
        return Delta(delta.content + more.content, delta.reasoning + more.reasoning,
                     delta.tool_calls + more.tool_calls)

    def finish(self) -> Delta:
        self.reply.finish()
        return Delta(content=self._stop.flush())

    def answer_token(self, token: int) -> bool:
        """Whether `token`, just fed, is part of the answer's text (what logprobs report): not reasoning, not
        a tool call, not harmony's structure."""
        return token not in self._specials and self.reply.in_answer

    def finish_reason(self, engine_reason: str) -> str:
        return "stop" if self._stop.stopped else self.reply.finish_reason(engine_reason)

    def _delta(self, pieces) -> Delta:
        delta = Delta()
        for kind, value in pieces:
            if kind == "analysis":
                delta.reasoning += value
            elif kind == "tool_calls":
                delta.tool_calls.append(value)
            else:
                delta.content += self._stop.feed(value)
        return delta


class TextAssembler:
    """Raw text completion: every token decoded except the end-of-text token that stopped it."""

    def __init__(self, tokenizer: Tokenizer, stop: Iterable[str] = (), end_tokens: Iterable[int] = ()):
        self._decoder = StreamDecoder(tokenizer)
        self._stop = StopMatcher(stop)
        self._end_tokens = frozenset(end_tokens)

    @property
    def stopped(self) -> bool:
        return self._stop.stopped

    def feed(self, token: int) -> Delta:
        if token in self._end_tokens:
            return Delta()
        return Delta(content=self._stop.feed(self._decoder.feed(token)))

    def answer_token(self, token: int) -> bool:
        return token not in self._end_tokens

    def finish(self) -> Delta:
        return Delta(content=self._stop.feed(self._decoder.flush()) + self._stop.flush())

    def finish_reason(self, engine_reason: str) -> str:
        return "stop" if self._stop.stopped else engine_reason
