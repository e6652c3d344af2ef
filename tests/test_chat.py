"""The text-in, text-out API (model/runtime/chat.py): the same tokens as generate(), decoded and parsed."""
import pytest
import torch

from gpt_oss_triton.model import GptOss, harmony
from gpt_oss_triton.model.runtime.chat import chat, complete, stream_chat, stream_text
from gpt_oss_triton.model.runtime.generate import generate
from gpt_oss_triton.model.runtime.sampling import SamplingParams

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def model():
    return GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")


def test_complete_is_generate_decoded(model):
    tok = model.tokenizer
    eot = tok.token_id("<|endoftext|>")
    ids = list(generate(model, tok.encode("Once upon"), GREEDY, stop_tokens={eot}))
    ids = ids[:-1] if ids[-1] == eot else ids  # the text leaves out the token that ended it
    assert complete(model, "Once upon", GREEDY) == tok.decode(ids)
    stream = stream_text(model, "Once upon", GREEDY)
    assert "".join(stream) == tok.decode(ids) and stream.stats.new_tokens >= len(ids)


@pytest.mark.parametrize("reasoning", ["low", "high"])
def test_chat_is_generate_parsed(model, reasoning):
    tok = model.tokenizer
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = harmony.render(tok, messages, reasoning=reasoning)
    ids = list(generate(model, prompt, GREEDY, stop_tokens=harmony.stop_tokens_for_assistant_actions(tok)))
    assert chat(model, messages, GREEDY, reasoning=reasoning) == harmony.parse(tok, ids)
    stream = stream_chat(model, messages, GREEDY, reasoning=reasoning)
    pieces = list(stream)
    assert stream.stats.prompt_tokens == len(prompt)
    for m in stream.messages:  # the streamed pieces, joined per channel, are the parsed contents
        assert m["content"] in "".join(text for ch, text in pieces if ch == m.get("channel"))


def test_limits_before_any_work(model):
    with pytest.raises(ValueError, match="reasoning must be one of"):
        stream_chat(model, [{"role": "user", "content": "Hi"}], reasoning="max")
    with pytest.raises(ValueError, match="top_p must be in"):
        complete(model, "x", SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        complete(model, "x", SamplingParams(max_new_tokens=model.config.max_context))
    bare = GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
    bare.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        complete(bare, "x")


def test_text_leaves_out_the_stop_token(model):
    from gpt_oss_triton.model.runtime.chat import TextStream
    from gpt_oss_triton.model.runtime.generate import Generation, GenerationStats

    tok = model.tokenizer
    eot = tok.token_id("<|endoftext|>")
    stream = TextStream(tok, Generation(iter(tok.encode("hi") + [eot]), GenerationStats()), {eot})
    assert "".join(stream) == "hi"
