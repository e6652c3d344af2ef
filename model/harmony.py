"""The harmony chat format of gpt-oss: a conversation rendered to prompt ids, the model's reply parsed back.

A message is `<|start|>{role}<|message|>{content}<|end|>`, an assistant message also names its channel
(`<|start|>assistant<|channel|>final<|message|>…`); a prompt ends with `<|start|>assistant` for the model to
continue. `render` matches openai-harmony's `render_conversation_for_completion` id for id and `parse` its
`parse_messages_from_completion_tokens` (checked against its output in tests/test_harmony.py). Special
tokens are looked up by name, so the byte-level test tokenizer renders the same structure.
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence

from .tokenizer import StreamDecoder, Tokenizer

REASONING_EFFORTS = ("low", "medium", "high")
CHANNELS = ("analysis", "commentary", "final")
ROLES = ("system", "developer", "user", "assistant")

_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n"
_CHANNELS_LINE = "# Valid channels: analysis, commentary, final. Channel must be included for every message."


def stop_tokens(tokenizer: Tokenizer) -> set[int]:
    """Ids that end a message: `<|end|>` plus the two that end the assistant's turn."""
    return {tokenizer.token_id("<|end|>")} | stop_tokens_for_assistant_actions(tokenizer)


def stop_tokens_for_assistant_actions(tokenizer: Tokenizer) -> set[int]:
    """Ids that end the assistant's turn: `<|return|>` (answer done) and `<|call|>` (a tool call)."""
    return {tokenizer.token_id("<|return|>"), tokenizer.token_id("<|call|>")}


def render(
    tokenizer: Tokenizer,
    messages: Sequence[dict],
    *,
    reasoning: str = "medium",
    date: str | datetime.date | None = None,
) -> list[int]:
    """Prompt ids for `messages` (OpenAI-style dicts), ending with `<|start|>assistant`.

    `reasoning` is low|medium|high; `date` ("YYYY-MM-DD" or a date) adds a "Current date" line to the
    system message. `system` and `developer` messages become harmony developer instructions. Analysis
    messages before the last user message are dropped: the model only sees the reasoning of the turn
    it is in.
    """
    if reasoning not in REASONING_EFFORTS:
        raise ValueError(f"reasoning must be one of {', '.join(REASONING_EFFORTS)}, got {reasoning!r}")
    system = _MODEL_IDENTITY
    if date is not None:
        system += f"Current date: {_format_date(date)}\n"
    system += f"\nReasoning: {reasoning}\n\n{_CHANNELS_LINE}"

    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of message dicts")
    turns = [_normalize(i, m) for i, m in enumerate(messages)]
    last_user = max((i for i, (role, _, _) in enumerate(turns) if role == "user"), default=-1)

    ids = _render_message(tokenizer, "system", None, system)
    for i, (role, channel, text) in enumerate(turns):
        if channel == "analysis" and i < last_user:
            continue
        ids += _render_message(tokenizer, role, channel, text)
    return ids + [tokenizer.token_id("<|start|>")] + tokenizer.encode("assistant", specials=False)


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
    """Parses a completion fed one id at a time, for streaming reasoning and answer apart.

    `feed` returns the new content text; `channel` is the channel of the message that text belongs to.
    Lenient on purpose: every message may or may not start with `<|start|>{role}`, and `<|start|>` inside
    a message's content ends it.
    """

    def __init__(self, tokenizer: Tokenizer, role: str = "assistant"):
        self._tokenizer = tokenizer
        self._default_role = role
        self._start = tokenizer.token_id("<|start|>")
        self._message = tokenizer.token_id("<|message|>")
        self._ends = stop_tokens(tokenizer)
        self.messages: list[dict] = []
        self.channel: str | None = None
        self._begin_header(role_in_header=False)

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
                self.channel = self._current.get("channel")
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
        # e.g. "assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
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
        for part in parts:
            if part.startswith("to="):
                message["recipient"] = part.removeprefix("to=")
            else:
                message["content_type"] = part
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


def _normalize(index: int, message: dict) -> tuple[str, str | None, str]:
    """(harmony role, channel, text) of one OpenAI-style message, checking it on the way."""
    if not isinstance(message, dict):
        raise ValueError(f"message {index} must be a dict, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"message {index} has unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if "content" not in message:
        raise ValueError(f"message {index} ({role}) has no 'content'")
    text = _content_text(index, role, message["content"])
    if role in ("system", "developer"):
        return "developer", None, f"# Instructions\n\n{text}"
    if role == "user":
        return "user", None, text
    channel = message.get("channel", "final")
    if channel not in CHANNELS:
        raise ValueError(
            f"message {index} (assistant) has unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}"
        )
    return "assistant", channel, text


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


def _render_message(tokenizer: Tokenizer, role: str, channel: str | None, text: str) -> list[int]:
    # Text goes in as plain text: "<|end|>" typed by a user must not end the message.
    ids = [tokenizer.token_id("<|start|>"), *tokenizer.encode(role, specials=False)]
    if channel is not None:
        ids += [tokenizer.token_id("<|channel|>"), *tokenizer.encode(channel, specials=False)]
    ids += [tokenizer.token_id("<|message|>"), *tokenizer.encode(text, specials=False)]
    return ids + [tokenizer.token_id("<|end|>")]
