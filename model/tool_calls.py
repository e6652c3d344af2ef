"""Tool calls in OpenAI's shapes, from and to harmony: what the Python API (runtime/chat.py) and the server's
protocols (Chat Completions, Responses) share.

- `plan_tools(tools, tool_choice)`: what the prompt shows and what it forces. `auto` shows the tools and lets
  the model choose; `none` leaves them out of the prompt; a named function (or `required` with one tool) forces
  the header `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>` after the prompt's
  `<|start|>assistant`, so the model can only write its arguments; `required` with several tools forces
  the header up to where their names part (`<|channel|>commentary to=functions.get_` for get_weather and
  get_time), and a `ForcedCall` constraint lets the model write only the rest of one of their headers.
- `ReplyAssembler`: a harmony completion, token by token, as reasoning, text and OpenAI tool-call pieces
  (`{"index", "id", "type", "function": {"name", "arguments"}}` first, then argument pieces), and as the
  assistant messages to send back (calls as `tool_calls`). Only a call to a declared function becomes a tool
  call: any other message with a recipient (an undeclared function, a built-in tool such as `browser`, any
  call when no tools were given) is dropped from the reply, with a warning in the log, and its `<|call|>`
  ends the turn like a `<|return|>`; a client could neither run it nor answer it.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass

import torch

from . import harmony
from .harmony_tools import ToolsError, function_tools
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)
_FUNCTIONS = "functions."
_MAX_LOOKAHEAD = 128  # header ids read after a call before deciding that no parallel call follows


def stop_tokens(tokenizer: Tokenizer, parallel_calls: bool) -> set[int]:
    """The ids that end a reply's generation: `<|return|>`, and `<|call|>` unless more calls may follow."""
    stops = harmony.stop_tokens_for_assistant_actions(tokenizer)
    return stops - {tokenizer.token_id("<|call|>")} if parallel_calls else stops


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def function_name(recipient: str) -> str:
    """`functions.get_weather` -> `get_weather` (a recipient outside `functions` is kept whole)."""
    return recipient.removeprefix(_FUNCTIONS)


@dataclass(frozen=True)
class ToolPlan:
    """How a request's tools and tool_choice shape its generation."""

    tools: list[dict]  # the tools the prompt shows (empty for tool_choice "none")
    prefix: str = ""  # harmony text forced after the prompt's `<|start|>assistant`
    choose_from: tuple[str, ...] = ()  # names a ForcedCall constraint picks among (after the prefix)

    @property
    def functions(self) -> tuple[str, ...]:
        """The names of the functions the prompt shows: the only calls a reply may make."""
        return tuple(tool.name for tool in function_tools(self.tools))

    def prompt(self, tokenizer: Tokenizer, messages, **render) -> list[int]:
        """The prompt ids: the conversation rendered with the tools, then the forced prefix."""
        return harmony.render(tokenizer, messages, tools=self.tools, **render) + self.prefix_ids(tokenizer)

    def prefix_ids(self, tokenizer: Tokenizer) -> list[int]:
        return tokenizer.encode(self.prefix)

    def constraint(self, tokenizer: Tokenizer) -> ForcedCall | None:
        if not self.choose_from:
            return None
        return ForcedCall(tokenizer, self.choose_from, typed=self.prefix.removeprefix("<|channel|>"))


def _call_header(name: str) -> str:
    return f"<|channel|>commentary to={_FUNCTIONS}{name} <|constrain|>json<|message|>"


def plan_tools(tools, tool_choice="auto") -> ToolPlan:
    """The plan for OpenAI `tools` and `tool_choice` ("auto", "none", "required", or a named function as
    `{"type": "function", "function": {"name": ...}}` or the Responses API's `{"type": "function", "name": ...}`).
    ToolsError names the field at fault."""
    checked = function_tools(tools)
    names = [tool.name for tool in checked]
    tools = list(tools or [])
    if tool_choice is None or tool_choice == "auto":
        return ToolPlan(tools)
    if tool_choice == "none":
        return ToolPlan([])
    if tool_choice == "required":
        if not names:
            raise ToolsError("tool_choice 'required' needs at least one tool in tools", param="tool_choice")
        if len(names) == 1:
            return ToolPlan(tools, _call_header(names[0]))
        # What every header shares goes in the prompt: the model's tokens go only to the choice.
        return ToolPlan(tools, f"<|channel|>commentary to={_FUNCTIONS}{os.path.commonprefix(names)}", tuple(names))
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else tool_choice.get("name")
        if name not in names:
            raise ToolsError(f"tool_choice names the function {name!r}, which is not in tools "
                             f"({', '.join(names) or 'none given'})", param="tool_choice")
        return ToolPlan(tools, _call_header(name))
    raise ToolsError(f"tool_choice must be 'auto', 'none', 'required' or {{'type': 'function', 'function': "
                     f"{{'name': ...}}}}, got {tool_choice!r:.80}", param="tool_choice")


class ForcedCall:
    """A TokenConstraint (runtime.engine) for a prompt ending `<|start|>assistant<|channel|>` and `typed` (a start
    of the header): the model may only write the rest of `commentary to=functions.NAME <|constrain|>json<|message|>`
    with NAME one of `names`, in any tokenization, choosing among the names still possible token by token; then
    it writes freely."""

    def __init__(self, tokenizer: Tokenizer, names, typed: str = ""):
        self._tokenizer = tokenizer
        headers = [f"commentary to={_FUNCTIONS}{name} " for name in names]
        if not all(h.startswith(typed) for h in headers):
            raise ValueError(f"the header typed so far, {typed!r}, starts no header of {list(names)}")
        self._targets = [h[len(typed):].encode() for h in headers]
        self._tail = [tokenizer.token_id("<|constrain|>"), *tokenizer.encode("json", specials=False),
                      tokenizer.token_id("<|message|>")]
        self._written = b""
        self._tail_done: int | None = None  # ids of the tail written, once the text is complete
        tokenizer.id_of_bytes(b"")  # builds the tokenizer's map here, not on the engine's thread

    def allowed_tokens(self) -> torch.Tensor | None:
        if self._tail_done is None:  # every token that some header still possible goes on with
            ids = set()
            for target in self._targets:
                if target.startswith(self._written):
                    rest = target[len(self._written):]
                    ids.update(self._tokenizer.id_of_bytes(rest[:k]) for k in range(1, len(rest) + 1))
            ids.discard(None)
        elif self._tail_done < len(self._tail):
            ids = {self._tail[self._tail_done]}
        else:
            return None
        mask = torch.zeros(self._tokenizer.vocab_size, dtype=torch.bool)
        mask[sorted(ids)] = True
        return mask

    def advance(self, token: int) -> None:
        if self._tail_done is None:
            self._written += self._tokenizer.token_bytes(token)
            if self._written in self._targets:
                self._tail_done = 0
        elif self._tail_done < len(self._tail):
            self._tail_done += 1


class ReplyAssembler:
    """A harmony completion fed token by token (`feed`), as pieces: `("analysis" | "commentary" | "final", text)`
    for text (commentary with no recipient is a preamble), `("tool_calls", piece)` for a tool call (the first
    piece `{"index", "id", "type": "function", "function": {"name", "arguments": ""}}`, then `{"index",
    "function": {"arguments": text}}`). `finish()` at the end, then `messages()` is the reply to send back.

    Only calls to `functions` (the declared names) are tool calls; any other message with a recipient is
    dropped, its `{"recipient", "content"}` kept in `dropped` and logged. `<|call|>` ends the reply
    (`stopped`). With `parallel_calls`, the reply goes on while the model writes more calls: the ids after a
    call are held back until their header shows another call (then it streams) or anything else (then the
    reply ends there and those ids are dropped). `prefix`: ids the prompt forced
    after `<|start|>assistant` (a call's header), read as if the model had written them; their pieces are in
    `prefix_pieces`.
    """

    def __init__(self, tokenizer: Tokenizer, *, functions=(), parallel_calls: bool = False, prefix=()):
        self._tokenizer = tokenizer
        self._functions = frozenset(functions)
        self.dropped: list[dict] = []  # messages to no declared function: {"recipient", "content"}
        self._parser = harmony.StreamParser(tokenizer)
        self._start, self._ends = tokenizer.token_id("<|start|>"), harmony.stop_tokens(tokenizer)
        self._call = tokenizer.token_id("<|call|>")
        self._parallel = parallel_calls
        self.calls: list[dict] = []  # the tool calls so far, their arguments as streamed
        self.reasoning_tokens = 0  # ids read inside analysis messages
        self.stopped = False  # the reply ended before the generation did (at or after a call)
        self._stop_reason = "tool_calls"
        self._open: dict | None = None  # the header of the message being read
        self._done: list[dict] = []  # the reply's finished messages, each call as a `tool_calls` message
        self._after_call: list[int] | None = None  # after a call (parallel): the ids since, until decided
        self.prefix_pieces = [piece for token in prefix for piece in self.feed(token)]

    def feed(self, token: int) -> list[tuple[str, str | dict]]:
        if self.stopped:
            return []
        if self._after_call is not None:
            return self._look_past_call(token)
        if self._open is not None and self._open.get("channel") == "analysis":
            self.reasoning_tokens += 1
        text = self._parser.feed(token)
        header = self._parser.header
        if self._open is not None and header is not self._open:  # the message being read ended at `token`
            self._closed(token)
            if self.stopped or self._after_call is not None:
                return []
        pieces = self._opened() if header is not None and header is not self._open else []
        if text:
            if self._is_call(self._open):
                self.calls[-1]["function"]["arguments"] += text
                pieces.append(("tool_calls", {"index": len(self.calls) - 1, "function": {"arguments": text}}))
            elif "recipient" not in self._open:  # a dropped call's text goes nowhere
                pieces.append((self._open.get("channel", "final"), text))
        return pieces

    @property
    def in_answer(self) -> bool:
        """The message being read is text for the user: on final or commentary, to no tool."""
        return self._open is not None and self._open.get("channel") != "analysis" and "recipient" not in self._open

    def finish(self) -> None:
        """The generation ended: a message cut off by the token limit is kept as written so far."""
        if self._open is not None and not self.stopped and self._after_call is None:
            self._keep(self._parser.finish()[-1])
            self._open = None

    def finish_reason(self, engine_reason: str) -> str:
        """The reply's finish reason given the engine's ("stop" or "length"): "tool_calls" if it ended with calls."""
        if self.stopped:
            return self._stop_reason
        return "tool_calls" if self._after_call is not None else engine_reason

    def messages(self) -> list[dict]:
        """The reply as messages to append to the conversation: harmony's text messages (`role`, `channel`,
        `content`), and each run of calls as one `{"role": "assistant", "content": None, "tool_calls": [...]}`."""
        out: list[dict] = []
        for message in self._done:
            if "tool_calls" in message and out and "tool_calls" in out[-1]:
                out[-1] = {**out[-1], "tool_calls": out[-1]["tool_calls"] + message["tool_calls"]}
            else:
                out.append(message)
        return out

    def _opened(self) -> list[tuple[str, dict]]:
        self._open = self._parser.header
        if not self._is_call(self._open):
            return []
        call = {"id": call_id(), "type": "function",
                "function": {"name": function_name(self._open["recipient"]), "arguments": ""}}
        self.calls.append(call)
        return [("tool_calls", {"index": len(self.calls) - 1, **call, "function": dict(call["function"])})]

    def _closed(self, token: int) -> None:
        """The message in `_open` ended at `token`."""
        ended, self._open = self._open, None
        self._keep(ended)
        if self._is_call(ended):
            if self._parallel:
                self._after_call = [token] if token == self._start else []
            else:
                self.stopped = True
        elif token == self._call:  # <|call|> after text (or a dropped call) ends the turn all the same
            self.stopped, self._stop_reason = True, "stop"

    def _is_call(self, header: dict) -> bool:
        recipient = header.get("recipient", "")
        return recipient.startswith(_FUNCTIONS) and function_name(recipient) in self._functions

    def _keep(self, parsed: dict) -> None:
        """A finished message into the reply: a call as a `tool_calls` message, a message to no declared
        function dropped."""
        if self._is_call(parsed):  # the last call opened is the one that ended
            self._done.append({"role": "assistant", "content": None, "tool_calls": [self.calls[-1]]})
        elif "recipient" in parsed:
            self._drop(parsed)
        else:
            self._done.append(parsed)

    def _drop(self, parsed: dict) -> None:
        recipient = parsed["recipient"]
        self.dropped.append({"recipient": recipient, "content": parsed.get("content", "")})
        declared = ", ".join(sorted(self._functions))
        log.warning("dropped the model's call to %r: %s", recipient,
                    f"not one of the declared functions ({declared})" if declared else "no tools were given")

    def _look_past_call(self, token: int) -> list[tuple[str, dict]]:
        held = self._after_call
        held.append(token)
        self._parser.feed(token)
        header = self._parser.header
        if header is not None:  # a header ended: another call streams on, anything else ends the reply
            if self._is_call(header):
                self._after_call = None
                return self._opened()
            if "recipient" in header:
                self._drop(header)
            self.stopped = True
            return []
        role = self._tokenizer.decode(held[1:])
        if held[0] != self._start or token in self._ends or len(held) > _MAX_LOOKAHEAD or not (
                "assistant".startswith(role) or role.startswith("assistant")):
            self.stopped = True
        return []
