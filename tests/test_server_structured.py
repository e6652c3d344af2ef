"""Structured outputs, strict tools, logprobs, penalties and logit_bias on the wire (Chat Completions,
Completions, Responses) with the openai client on the loopback. A ScriptedModel whose reply breaks the schema
shows the grammar at work (the engine, sampler, grammar and server are the real ones); the tiny random model's
JSON parses and validates; logprobs are checked for shape and against the text they cover."""
import json

import jsonschema
import openai
import pytest
import torch

from gpt_oss_triton.model import GptOss, Tokenizer
from gpt_oss_triton.model.server.app import create_app
from scripted_model import ScriptedModel
from test_server import TIMEOUT, serving

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
          "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": SCHEMA, "strict": True}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": SCHEMA}}
HEADER = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"


def script(context: str) -> str:
    """Replies that break SCHEMA: an extra key and a number where a string belongs."""
    if context.endswith("}"):  # the grammar closed the object early: end the message
        return "<|call|>" if "to=functions" in context.rsplit("<|start|>", 1)[-1] else "<|return|>"
    if context.endswith("<|message|>") and "to=functions" in context.rsplit("<|start|>", 1)[-1]:
        return '{"city": "Paris", "days": 2, "extra": 1}<|call|>'
    if "call" in context.rsplit("<|start|>user", 1)[-1]:
        return "<|channel|>analysis<|message|>Tool.<|end|><|start|>assistant" + HEADER
    return ('<|channel|>analysis<|message|>Think {"a"<|end|><|start|>assistant<|channel|>final<|message|>'
            '{"city": 7, "days": 2}<|return|>')


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def client(tok):
    app = create_app(ScriptedModel.from_text(tok, script), tok, model_name="scripted", max_batch=4, max_len=2000)
    with serving(app) as base, openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0,
                                              timeout=TIMEOUT) as c:
        yield c


def _chat(client, content, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": content}], **kw)


def test_response_format_holds_the_answer_to_the_schema(client):
    free = _chat(client, "plain").choices[0].message
    assert json.loads(free.content) == {"city": 7, "days": 2}  # what the model wants, unconstrained
    reply = _chat(client, "forecast", response_format=FORMAT).choices[0]
    answer = json.loads(reply.message.content)
    jsonschema.validate(answer, SCHEMA)
    assert reply.finish_reason == "stop" and 'Think {"a"' in reply.message.reasoning_content  # reasoning: free
    streamed = _chat(client, "forecast", response_format=FORMAT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.message.content
    as_object = _chat(client, "forecast", response_format={"type": "json_object"}).choices[0].message.content
    assert json.loads(as_object) == {"city": 7, "days": 2}  # any JSON object will do


def test_strict_tool_arguments_follow_the_schema(client):
    reply = _chat(client, "call it", tools=[WEATHER]).choices[0]
    assert reply.finish_reason == "tool_calls"
    assert json.loads(reply.message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 2}
    loose = {"type": "function", "function": {**WEATHER["function"], "strict": False}}
    args = _chat(client, "call it", tools=[loose]).choices[0].message.tool_calls[0].function.arguments
    assert json.loads(args) == {"city": "Paris", "days": 2, "extra": 1}  # not strict: as written


def test_responses_text_format_and_strict_tools(client):
    response = client.responses.create(model="scripted", input="forecast", temperature=0,
                                       text={"format": {"type": "json_schema", "name": "forecast", "schema": SCHEMA,
                                                        "strict": True}})
    jsonschema.validate(json.loads(response.output_text), SCHEMA)
    assert response.text.format.type == "json_schema"
    call = client.responses.create(model="scripted", input="call it", temperature=0, tools=[
        {"type": "function", "name": "get_weather", "parameters": SCHEMA}])  # strict by default here
    assert json.loads([o for o in call.output if o.type == "function_call"][0].arguments) == \
        {"city": "Paris", "days": 2}


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name", "schema": {}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "response_format"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": -9}, "frequency_penalty"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"), ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
])
def test_bad_fields_get_a_400_naming_them(client, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}], extra_body=body)
    assert e.value.body["param"] == param, e.value.body


def test_chat_logprobs_cover_the_answer(client):
    reply = _chat(client, "plain", logprobs=True, top_logprobs=3).choices[0]
    entries = reply.logprobs.content
    assert bytes(b for e in entries for b in e.bytes).decode() == reply.message.content  # the answer, no more
    for e in entries:
        assert e.logprob == pytest.approx(0.0, abs=1e-3)  # the scripted model is sure of each token
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.top_logprobs[1].logprob < -1000
    streamed = _chat(client, "plain", logprobs=True, top_logprobs=3, stream=True)
    pieces = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in pieces] == [e.model_dump() for e in entries]
    assert _chat(client, "plain").choices[0].logprobs is None


@pytest.fixture(scope="module")
def tiny():
    """The tiny random model's server: its logits are not one-hot, so biases and penalties show."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
    with serving(create_app(model, model.tokenizer, model_name="tiny", max_batch=2, max_len=64)) as base, \
            openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=TIMEOUT) as c:
        yield c
    torch.set_num_threads(threads)


def test_completion_logprobs_logit_bias_and_penalties(tiny):
    def complete(**kw):
        return tiny.completions.create(model="tiny", prompt="abc", max_tokens=6, **kw).choices[0]

    forced = complete(temperature=1.0, seed=1, logprobs=2, logit_bias={str(ord("z")): 100})
    assert forced.text == "z" * 6
    lp = forced.logprobs
    assert "".join(lp.tokens) == forced.text and lp.text_offset == list(range(6))
    assert all(lp.top_logprobs[i]["z"] == lp.token_logprobs[i] > -1e-3 for i in range(6))
    greedy = complete(temperature=0, logprobs=0)
    assert all(len(top) == 1 for top in greedy.logprobs.top_logprobs)  # the drawn token alone
    # A bias of 7 outweighs the tiny model's logit range (about +-3): greedy repeats "z"; penalties growing with
    # each "z" written (2 + 2n) soon outweigh the bias, so fewer "z" come, but the first still does.
    z = {str(ord("z")): 7}
    assert complete(temperature=0, logit_bias=z).text == "z" * 6
    penalised = complete(temperature=0, logit_bias=z, frequency_penalty=2.0, presence_penalty=2.0).text
    assert penalised.startswith("z") and penalised.count("z") < 6, penalised
    assert complete(temperature=0, logit_bias=z, frequency_penalty=-2.0).text == "z" * 6  # negative: repeats
