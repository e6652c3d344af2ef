"""Text in, text out: continue a prompt, or answer a harmony chat with its reasoning and its answer apart.

    model = GptOss.from_pretrained("gpt-oss-20b-dir")
    chat(model, [{"role": "user", "content": "Why is the sky blue?"}], reasoning="low")
        -> [{"role": "assistant", "channel": "analysis", "content": ...}, {..., "channel": "final", ...}]
    for channel, text in stream_chat(model, messages): ...      # as the model writes it
    complete(model, "Once upon a time")  /  for text in stream_text(model, prompt): ...

The tokenizer is the model's own (`model.tokenizer`) unless one is passed. Every limit (context, sampling
parameters, an empty prompt) is checked before any work starts.
"""
from collections.abc import Iterator, Sequence

from .. import harmony
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
    """Iterate for (channel, text) pieces as the model writes them; afterwards `messages` holds the reply as
    harmony.parse gives it (reasoning on "analysis", the answer on "final") and `stats` its GenerationStats."""

    def __init__(self, tokenizer: Tokenizer, generation):
        self._parser, self._generation = harmony.StreamParser(tokenizer), generation
        self.stats = generation.stats
        self.messages: list[dict] = []

    def __iter__(self) -> Iterator[tuple[str | None, str]]:
        for token in self._generation:
            text = self._parser.feed(token)
            if text:
                yield self._parser.channel, text
        self.messages = self._parser.finish()


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
                reasoning: str = "medium", date=None, tokenizer: Tokenizer | None = None) -> ChatStream:
    """The assistant's reply to `messages` (OpenAI-style dicts, see harmony.render), streamed; it ends at
    `<|return|>` or `<|call|>` (a tool call) or at the token limit."""
    tok = _tokenizer(model, tokenizer)
    prompt = harmony.render(tok, messages, reasoning=reasoning, date=date)
    return ChatStream(tok, generate(model, prompt, params,
                                    stop_tokens=harmony.stop_tokens_for_assistant_actions(tok)))


def chat(model, messages: Sequence[dict], params: SamplingParams = SamplingParams(), **kw) -> list[dict]:
    stream = stream_chat(model, messages, params, **kw)
    for _ in stream:
        pass
    return stream.messages
