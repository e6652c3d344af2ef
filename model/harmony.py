"""The harmony chat format of gpt-oss: a conversation rendered to prompt ids, the model's reply parsed back.

A message is `<|start|>{role}<|message|>{content}<|end|>`, an assistant message also names its channel
(`<|start|>assistant<|channel|>final<|message|>…`); a prompt ends with `<|start|>assistant` for the model to
continue. With function tools the developer message lists them (harmony_tools.py), the model calls one with
`<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{arguments}<|call|>`, and the result
comes back as `<|start|>functions.NAME to=assistant<|channel|>commentary<|message|>…<|end|>`. `render`
matches openai-harmony's `render_conversation_for_completion` id for id and `parse` its
`parse_messages_from_completion_tokens` (checked against its output in tests/test_harmony.py). Special
tokens are looked up by name, so the byte-level test tokenizer renders the same structure.
"""
from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .harmony_tools import ToolsError, function_tools, tools_section
from .tokenizer import StreamDecoder, Tokenizer

REASONING_EFFORTS = ("low", "medium", "high")
CHANNELS = ("analysis", "commentary", "final")
ROLES = ("system", "developer", "user", "assistant", "tool")

_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n"
_CHANNELS_LINE = "# Valid channels: analysis, commentary, final. Channel must be included for every message."
_RECIPIENT = re.compile(r"functions\.[A-Za-z0-9_.:-]{1,64}|(browser|container)(\.[a-z_]+)?|python|assistant")
_FUNCTIONS_LINE = "\nCalls to these tools must go to the commentary channel: 'functions'."


def stop_tokens(tokenizer: Tokenizer) -> set[int]:
    """Ids that end a message: `<|end|>` plus the two that end the assistant's turn."""
    return {tokenizer.token_id("<|end|>")} | stop_tokens_for_assistant_actions(tokenizer)


def stop_tokens_for_assistant_actions(tokenizer: Tokenizer) -> set[int]:
    """Ids that end the assistant's turn: `<|return|>` (answer done) and `<|call|>` (a tool call)."""
    return {tokenizer.token_id("<|return|>"), tokenizer.token_id("<|call|>")}


def is_recipient(name: str) -> bool:
    """Whether a header may address `name`: a function (`functions.NAME`), a built-in tool (`browser`,
    `browser.search`, `python`, `container.exec`, ...) or the assistant (in a tool's reply)."""
    return bool(_RECIPIENT.fullmatch(name))


def render(
    tokenizer: Tokenizer,
    messages: Sequence[dict],
    *,
    reasoning: str = "medium",
    date: str | datetime.date | None = None,
    tools: Sequence[dict] | None = None,
    response_format: dict | None = None,
) -> list[int]:
    """Prompt ids for `messages` (OpenAI Chat Completions dicts), ending with `<|start|>assistant`.

    `reasoning` is low|medium|high; `date` ("YYYY-MM-DD" or a date) adds a "Current date" line to the
    system message; `tools` (OpenAI function tools) are shown to the model as a `# Tools` section, and
    `response_format` ({"name", "description", "schema"}: a JSON Schema the answer follows) as a
    `# Response Formats` section after it, as harmony's guide writes it.
    `system` and `developer` messages become harmony developer instructions. An assistant message may
    carry `tool_calls` (its `content`, if any, is their preamble on `commentary`) and its reasoning as
    `reasoning_content` or `reasoning`; a `tool` message answers the call its `tool_call_id` names. The
    reasoning (analysis) of turns before the last user message is dropped: the model only sees the
    reasoning of the turn it is in. Bad input raises ValueError (`ToolsError` for tools and tool calls).
    """
    if reasoning not in REASONING_EFFORTS:
        raise ValueError(f"reasoning must be one of {', '.join(REASONING_EFFORTS)}, got {reasoning!r}")
    functions = function_tools(tools)
    system = _MODEL_IDENTITY
    if date is not None:
        system += f"Current date: {_format_date(date)}\n"
    system += f"\nReasoning: {reasoning}\n\n{_CHANNELS_LINE}"
    if functions:
        system += _FUNCTIONS_LINE

    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of message dicts")
    turns = _conversation(messages)
    if functions:
        section = tools_section(functions)
        if messages[0].get("role") in ("system", "developer"):  # the tools end its instructions
            turns[0].text += f"\n\n{section}"
        else:
            turns.insert(0, _Turn("developer", section))
    if response_format is not None:
        section = _response_formats_section(response_format)
        if turns and turns[0].role == "developer":
            turns[0].text += f"\n\n{section}"
        else:
            turns.insert(0, _Turn("developer", section))
    last_user = max((i for i, turn in enumerate(turns) if turn.role == "user"), default=-1)

    ids = _Turn("system", system).render(tokenizer)
    for i, turn in enumerate(turns):
        if turn.channel == "analysis" and i < last_user:
            continue
        ids += turn.render(tokenizer)
    return ids + [tokenizer.token_id("<|start|>")] + tokenizer.encode("assistant", specials=False)


def _response_formats_section(fmt: dict) -> str:
    """`# Response Formats`, `## {name}`, an optional `// {description}` line, then the schema as JSON."""
    description = f"// {fmt['description']}\n" if fmt.get("description") else ""
    return f"# Response Formats\n\n## {fmt['name']}\n\n{description}{json.dumps(fmt['schema'])}"


def parse(tokenizer: Tokenizer, ids: Iterable[int]) -> list[dict]:
    """Messages in a completion: the ids the model produced after the prompt's `<|start|>assistant`.

    Each is `{"role", "channel", "content"}` (plus `recipient` / `content_type` where the header names them,
    as in a tool call). A reply cut off by the token limit keeps the text it has; a message whose header is
    unfinished is left out.
    """
    parser = StreamParser(tokenizer)
    for token_id in ids:
        parser.feed(token_id)
    return parser.finish()


class StreamParser:
    """Parses a completion fed one id at a time, for streaming reasoning, answer and tool calls apart.

    `feed` returns the new content text; `header` is the message that text belongs to (`role`, `channel`, and
    `recipient` / `content_type` where named), set as soon as its header ends, so a tool call's recipient is
    known before its arguments arrive; `channel` is its channel. `messages` holds the messages finished so
    far. Lenient on purpose: every message may or may not start with `<|start|>{role}`, and `<|start|>`
    inside a message's content ends it.
    """

    def __init__(self, tokenizer: Tokenizer, role: str = "assistant"):
        self._tokenizer = tokenizer
        self._default_role = role
        self._start = tokenizer.token_id("<|start|>")
        self._message = tokenizer.token_id("<|message|>")
        self._ends = stop_tokens(tokenizer)
        self.messages: list[dict] = []
        self._begin_header(role_in_header=False)

    @property
    def header(self) -> dict | None:
        """The message whose content is being read (its content not filled in yet); None in a header."""
        return self._current

    @property
    def channel(self) -> str | None:
        return self._current.get("channel") if self._current is not None else None

    def feed(self, token_id: int) -> str:
        """Consumes one id; returns the content text it adds (empty in headers and for held-back bytes)."""
        token_id = int(token_id)
        if self._current is None:
            if token_id == self._start:
                self._begin_header(role_in_header=True)
            elif token_id in self._ends:  # a header that never got its content: drop it
                self._begin_header(role_in_header=False)
            elif token_id == self._message:
                self._current = self._parse_header()
            else:
                self._header.append(token_id)
            return ""
        if token_id in self._ends or token_id == self._start:
            self._end_message()
            self._begin_header(role_in_header=token_id == self._start)
            return ""
        text = self._decoder.feed(token_id)
        self._content.append(text)
        return text

    def finish(self) -> list[dict]:
        """Ends the stream, keeping a message cut off in its content, and returns all messages."""
        if self._current is not None:
            self._end_message()
            self._begin_header(role_in_header=False)
        return self.messages

    def _begin_header(self, role_in_header: bool) -> None:
        self._current: dict | None = None  # the message whose content is being read, None in a header
        self._header: list[int] = []
        self._role_in_header = role_in_header
        self._content: list[str] = []
        self._decoder = StreamDecoder(self._tokenizer)

    def _parse_header(self) -> dict:
        # e.g. "assistant<|channel|>commentary to=functions.get_weather <|constrain|>json": the channel comes
        # out first, then the words left are [role] [recipient] [content type], as openai-harmony reads them,
        # but strictly: a recipient is a word `is_recipient` accepts (with or without "to="), and a content
        # type is a `<|constrain|>` word or the word after the recipient. Any other word (a sampled stray
        # byte, say) is ignored rather than taken for a tool to call.
        text = self._tokenizer.decode(self._header)
        channel = re.search(r"<\|channel\|>([^\s<]*)", text)
        if channel:
            text = text[: channel.start()] + " " + text[channel.end() :]
        parts = text.replace("<|constrain|>", " <|constrain|>").split()
        role = self._default_role
        if parts and (self._role_in_header or parts[0] == role):
            role = parts.pop(0)
        message = {"role": role}
        if channel and channel.group(1):
            message["channel"] = channel.group(1)
        after_recipient = False
        for word in parts:
            if "recipient" not in message and is_recipient(word.removeprefix("to=")):
                message["recipient"] = word.removeprefix("to=")
                after_recipient = True
                continue
            if "content_type" not in message and (word.startswith("<|constrain|>") or after_recipient
                                                   and not word.startswith("to=")):
                message["content_type"] = word
            after_recipient = False
        return message

    def _end_message(self) -> None:
        self._content.append(self._decoder.flush())
        self._current["content"] = "".join(self._content)
        self.messages.append(self._current)


def _format_date(date: str | datetime.date) -> str:
    if isinstance(date, datetime.datetime):
        date = date.date()
    if isinstance(date, datetime.date):
        return date.isoformat()
    if isinstance(date, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        try:
            return datetime.date.fromisoformat(date).isoformat()
        except ValueError:
            pass
    raise ValueError(f"date must be a datetime.date or a 'YYYY-MM-DD' string, got {date!r}")


@dataclass
class _Turn:
    """One harmony message of a prompt: `<|start|>{role}[ to={recipient}][<|channel|>{channel}][ {content_type}]
    <|message|>{text}` and `<|end|>`, or `<|call|>` for an assistant's message to a tool."""

    role: str
    text: str
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None

    def render(self, tokenizer: Tokenizer) -> list[int]:
        # Each piece is encoded on its own, as openai-harmony does (that fixes the ids at the seams), and
        # as plain text: "<|end|>" typed by a user must not end the message.
        def text(piece: str) -> list[int]:
            return tokenizer.encode(piece, specials=False)

        ids = [tokenizer.token_id("<|start|>"), *text(self.role)]
        if self.recipient is not None:
            ids += text(f" to={self.recipient}")
        if self.channel is not None:
            ids += [tokenizer.token_id("<|channel|>"), *text(self.channel)]
        if self.content_type is not None:
            constrained = self.content_type.removeprefix("<|constrain|>")
            if constrained != self.content_type:
                ids += [*text(" "), tokenizer.token_id("<|constrain|>"), *(text(constrained) if constrained else ())]
            else:
                ids += text(f" {self.content_type}")
        ids += [tokenizer.token_id("<|message|>"), *text(self.text)]
        calls = self.role == "assistant" and self.recipient is not None
        return ids + [tokenizer.token_id("<|call|>" if calls else "<|end|>")]


def _conversation(messages: Sequence[dict]) -> list[_Turn]:
    """The harmony messages of OpenAI-style `messages`, checking them on the way."""
    turns: list[_Turn] = []
    calls: dict[str, str] = {}  # tool_call_id -> function name, of the calls made so far
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {index} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {index} has unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if role == "assistant":
            turns += _assistant_turns(index, message, calls)
            continue
        if "content" not in message:
            raise ValueError(f"message {index} ({role}) has no 'content'")
        text = _content_text(index, role, message["content"])
        if role in ("system", "developer"):
            turns.append(_Turn("developer", f"# Instructions\n\n{text}"))
        elif role == "user":
            turns.append(_Turn("user", text))
        else:
            turns.append(_Turn(f"functions.{_tool_name(index, message, calls)}", text, "commentary", "assistant"))
    return turns


def _assistant_turns(index: int, message: dict, calls: dict[str, str]) -> list[_Turn]:
    """An assistant message: its reasoning (analysis), its text, then its tool calls, each a harmony message."""
    where = f"message {index} (assistant)"
    reasoning = message.get("reasoning_content")
    if reasoning is None:
        reasoning = message.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise ValueError(f"{where}: reasoning_content (or reasoning) must be a string, got {reasoning!r:.80}")
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise ToolsError(f"{where}: tool_calls must be a list", param="messages")
    content = message.get("content")
    if content is None and not (tool_calls or reasoning is not None):
        raise ValueError(f"{where} has no 'content'")
    text = "" if content is None else _content_text(index, "assistant", content)
    channel = message.get("channel", "commentary" if tool_calls else "final")
    if channel not in CHANNELS:
        raise ValueError(f"{where} has unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")

    turns = [_Turn("assistant", reasoning, "analysis")] if reasoning is not None else []
    recipient = message.get("recipient")
    if recipient is not None:  # a tool call as harmony.parse gives it
        if not isinstance(recipient, str) or not recipient or recipient != "".join(recipient.split()):
            raise ValueError(f"{where}: recipient must be a name without spaces, got {recipient!r}")
        content_type = message.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise ValueError(f"{where}: content_type must be a string, got {content_type!r}")
        turns.append(_Turn("assistant", text, channel, recipient, content_type))
    elif text or not turns and not tool_calls:
        turns.append(_Turn("assistant", text, channel))
    for k, call in enumerate(tool_calls):
        name, arguments = _tool_call(f"{where}: tool_calls[{k}]", call)
        if isinstance(call.get("id"), str):
            if call["id"] in calls:  # a tool result could not say which of the two it answers
                raise ToolsError(f"{where}: tool_calls[{k}].id {call['id']!r} repeats an earlier call's id",
                                 param="messages")
            calls[call["id"]] = name
        turns.append(_Turn("assistant", arguments, "commentary", f"functions.{name}", "<|constrain|>json"))
    return turns


def _tool_call(where: str, call) -> tuple[str, str]:
    """(name, arguments) of an OpenAI tool call `{"id", "type": "function", "function": {"name", "arguments"}}`."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise ToolsError(f"{where} must be an object with a 'function'", param="messages")
    if call.get("type", "function") != "function":
        raise ToolsError(f"{where}.type must be 'function', got {call['type']!r:.80}", param="messages")
    name = function.get("name")
    if not isinstance(name, str) or not name or name != "".join(name.split()):
        raise ToolsError(f"{where}.function.name must be a function's name, got {name!r}", param="messages")
    arguments = function.get("arguments", "")
    if isinstance(arguments, dict):  # some clients send the object itself rather than its JSON text
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise ToolsError(f"{where}.function.arguments must be a string of JSON, got {arguments!r:.80}",
                         param="messages")
    return name, arguments


def _tool_name(index: int, message: dict, calls: dict[str, str]) -> str:
    """The function a tool result comes from: its `name`, else the call its `tool_call_id` answers."""
    call_id, name = message.get("tool_call_id"), message.get("name")
    if call_id is not None and call_id not in calls:
        raise ToolsError(f"message {index} (tool): tool_call_id {call_id!r} matches no earlier tool call",
                         param="messages")
    name = name if name is not None else calls.get(call_id)
    if name is None:
        raise ToolsError(f"message {index} (tool) needs the tool_call_id of the call it answers", param="messages")
    if not isinstance(name, str) or not name or name != "".join(name.split()):
        raise ToolsError(f"message {index} (tool): name must be a function's name, got {name!r}", param="messages")
    return name


def _content_text(index: int, role: str, content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "".join(part["text"] for part in content)
    raise ValueError(
        f"message {index} ({role}): content must be a string or a list of {{'type': 'text', 'text': str}} parts, "
        f"got {content!r:.80}"
    )
