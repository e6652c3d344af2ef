"""Tool calls between OpenAI's shapes and harmony (model/tool_calls.py): tool_choice plans, the ForcedCall
constraint on the real tokenizer, the streamed reply assembly, and the Python API's agent loop (chat and
stream_chat with tools) on a scripted model."""
import json
import random

import pytest

from gpt_oss_triton.model import harmony
from gpt_oss_triton.model.harmony_tools import ToolsError
from gpt_oss_triton.model.runtime.chat import chat, stream_chat
from gpt_oss_triton.model.runtime.sampling import SamplingParams
from gpt_oss_triton.model.tool_calls import ForcedCall, ReplyAssembler, plan_tools
from scripted_model import ScriptedModel

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
GREEDY = SamplingParams(max_new_tokens=200, temperature=0.0)


def test_plans():
    assert plan_tools(None) == plan_tools([], "auto") == plan_tools([], None)
    assert plan_tools([WEATHER]).tools == [WEATHER] and plan_tools([WEATHER], "none").tools == []
    header = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    assert plan_tools([WEATHER], "required").prefix == header
    named = plan_tools([TIME, WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    assert named.prefix == header and named.tools == [TIME, WEATHER]
    assert plan_tools([TIME, WEATHER], {"type": "function", "name": "get_weather"}).prefix == header  # Responses
    several = plan_tools([WEATHER, TIME], "required")
    assert (several.prefix, several.choose_from) == ("<|channel|>commentary to=functions.get_",
                                                     ("get_weather", "get_time"))
    apart = plan_tools([WEATHER, {"type": "function", "function": {"name": "now"}}], "required")
    assert apart.prefix == "<|channel|>commentary to=functions."
    with pytest.raises(ToolsError, match="tool_choice names the function 'nope'") as e:
        plan_tools([WEATHER], {"type": "function", "function": {"name": "nope"}})
    assert e.value.param == "tool_choice"


@pytest.mark.parametrize("seed", range(4))
def test_forced_call_writes_one_of_the_headers_in_any_tokenization(o200k, seed):
    """Walk the constraint with random choices among the ids it allows: every walk ends in one tool's header,
    and the parser reads that call from it."""
    names = ["get_weather", "get_weather_now", "get_time"]
    constraint, rng, ids = ForcedCall(o200k, names), random.Random(seed), []
    while (mask := constraint.allowed_tokens()) is not None:
        allowed = mask.nonzero().flatten().tolist()
        assert allowed and len(ids) < 40
        ids.append(rng.choice(allowed))
        constraint.advance(ids[-1])
    text = o200k.decode(ids)
    assert text in [f"commentary to=functions.{n} <|constrain|>json<|message|>" for n in names], text
    (call,) = harmony.parse(o200k, o200k.encode("<|channel|>") + ids + o200k.encode('{}<|call|>'))
    assert call["recipient"] in [f"functions.{n}" for n in names] and call["content_type"] == "<|constrain|>json"


def test_forced_call_lets_the_model_pick_among_the_names(o200k):
    constraint = ForcedCall(o200k, ["get_weather", "get_time"])
    for token in o200k.encode("commentary to=functions.get_"):
        assert constraint.allowed_tokens()[token]
        constraint.advance(token)
    allowed = constraint.allowed_tokens()
    assert allowed[o200k.encode("weather")[0]] and allowed[o200k.encode("time")[0]]
    assert not allowed[o200k.encode("final")[0]] and not allowed[o200k.token_id("<|message|>")]


def _assemble(tokenizer, text, functions=("get_weather",), **kw):
    reply, pieces = ReplyAssembler(tokenizer, functions=functions, **kw), []
    for token in tokenizer.encode(text):
        pieces += reply.feed(token)
        if reply.stopped:
            break
    reply.finish()
    return reply, pieces


@pytest.mark.parametrize("name", ["o200k", "byte_level"])
def test_reply_pieces_join_up_to_the_messages(request, name):
    tokenizer = request.getfixturevalue(name)
    text = ("<|channel|>analysis<|message|>Need it.<|end|><|start|>assistant<|channel|>commentary<|message|>"
            "Checking é.<|end|><|start|>assistant" + CALL)
    reply, pieces = _assemble(tokenizer, text)
    assert "".join(t for c, t in pieces if c == "analysis") == "Need it."
    assert "".join(t for c, t in pieces if c == "commentary") == "Checking é."
    calls = [p for c, p in pieces if c == "tool_calls"]
    assert calls[0] == {"index": 0, "id": reply.calls[0]["id"], "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert "".join(p["function"]["arguments"] for p in calls[1:]) == '{"city": "Paris"}'
    assert all(set(p) == {"index", "function"} for p in calls[1:])
    assert reply.stopped and reply.finish_reason("stop") == "tool_calls"
    assert reply.messages() == [
        {"role": "assistant", "channel": "analysis", "content": "Need it."},
        {"role": "assistant", "channel": "commentary", "content": "Checking é."},
        {"role": "assistant", "content": None, "tool_calls": [reply.calls[0]]}]
    # The messages render back as the model wrote them (a call's recipient before its channel, as harmony
    # renders history).
    history = harmony.render(tokenizer, [{"role": "user", "content": "q"}, *reply.messages()])
    written = text.replace("<|channel|>commentary to=functions.get_weather", " to=functions.get_weather"
                                                                            "<|channel|>commentary")
    assert tokenizer.decode(history).endswith("<|start|>assistant" + written + "<|start|>assistant")


def test_reply_parallel_calls_and_what_ends_them(byte_level):
    second = CALL.replace("Paris", "Rome")
    # After a call, whatever is not another call's header ends the reply, as soon as it is known.
    for after, decided_at in [("<|start|>functions.get_weather to=assistant", "<|start|>f"),
                              ("<|start|>assistant<|channel|>final<|message|>Done", "<|message|>"),
                              ("<|return|>", "<|return|>"), ("oops", "o")]:
        text = CALL + "<|start|>assistant" + second + after
        reply, pieces = _assemble(byte_level, text, parallel_calls=True)
        assert [c["function"]["arguments"] for c in reply.calls] == ['{"city": "Paris"}', '{"city": "Rome"}']
        assert {c for c, _ in pieces} == {"tool_calls"}  # nothing of what follows leaks out
        assert reply.stopped and reply.finish_reason("stop") == "tool_calls"
        assert reply.messages() == [{"role": "assistant", "content": None, "tool_calls": reply.calls}]
        early, _ = _assemble(byte_level, text[:text.index(after)] + decided_at, parallel_calls=True)
        assert early.stopped, after
    # <|call|> ends the turn even after text (the engine no longer stops there with parallel calls).
    reply, _ = _assemble(byte_level, "<|channel|>final<|message|>Hi<|call|><|start|>assistant", parallel_calls=True)
    assert reply.stopped and reply.finish_reason("stop") == "stop" and reply.messages()[-1]["content"] == "Hi"
    # Cut by the token limit while deciding: still a tool-call reply.
    reply, _ = _assemble(byte_level, CALL + "<|start|>assi", parallel_calls=True)
    assert not reply.stopped and reply.finish_reason("length") == "tool_calls"
    # Cut inside the arguments: "length", the call kept as written so far.
    reply, _ = _assemble(byte_level, CALL[:CALL.index("{") + 5])
    assert reply.finish_reason("length") == "length"
    assert reply.messages()[0]["tool_calls"][0]["function"]["arguments"] == '{"cit'


def test_reply_prefix_is_read_as_written(byte_level):
    prefix = byte_level.encode("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>")
    reply = ReplyAssembler(byte_level, functions=["get_weather"], prefix=prefix)
    assert reply.prefix_pieces == [("tool_calls", {"index": 0, "id": reply.calls[0]["id"], "type": "function",
                                                   "function": {"name": "get_weather", "arguments": ""}})]
    for token in byte_level.encode('{}<|call|>'):
        reply.feed(token)
    assert reply.calls[0]["function"]["arguments"] == "{}" and reply.finish_reason("stop") == "tool_calls"


# The Python API: an agent loop in plain Python.

def _agent_script(context: str) -> str:
    if context.endswith("<|constrain|>json<|message|>"):
        return '{"city": "Paris"}<|call|>'
    if "to=assistant<|channel|>commentary<|message|>" in context.rsplit("<|start|>user", 1)[-1]:
        result = context.rsplit("to=assistant<|channel|>commentary<|message|>", 1)[1].split("<|end|>")[0]
        return f"<|channel|>final<|message|>It is {json.loads(result)['sky']}.<|return|>"
    if "weather" in context.rsplit("<|start|>user", 1)[-1]:
        return "<|channel|>analysis<|message|>Check.<|end|><|start|>assistant" + CALL
    return "<|channel|>final<|message|>Hello!<|return|>"


@pytest.fixture(scope="module")
def agent_model(byte_level):
    return ScriptedModel.from_text(byte_level, _agent_script)


def test_python_agent_loop(agent_model, byte_level):
    tools = {"get_weather": lambda city: {"sky": f"sunny in {city}"}}
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    for turn in range(3):
        reply = chat(agent_model, messages, GREEDY, tools=[WEATHER], tokenizer=byte_level)
        messages += reply
        calls = [call for message in reply for call in message.get("tool_calls", [])]
        if not calls:
            break
        for call in calls:
            result = tools[call["function"]["name"]](**json.loads(call["function"]["arguments"]))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
    assert turn == 1 and messages[-1] == {"role": "assistant", "channel": "final", "content": "It is sunny in Paris."}
    assert messages[1] == {"role": "assistant", "channel": "analysis", "content": "Check."}
    # The history the loop built renders exactly as the conversation went in harmony.
    assert byte_level.decode(harmony.render(byte_level, messages[:4], tools=[WEATHER])).endswith(
        "<|start|>assistant<|channel|>analysis<|message|>Check.<|end|><|start|>assistant to=functions.get_weather"
        '<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"sky": "sunny in Paris"}<|end|>'
        "<|start|>assistant")


def test_stream_chat_with_tools(agent_model, byte_level):
    stream = stream_chat(agent_model, [{"role": "user", "content": "weather?"}], GREEDY, tools=[WEATHER],
                         tokenizer=byte_level)
    pieces = list(stream)
    assert stream.finish_reason == "tool_calls"
    calls = [p for kind, p in pieces if kind == "tool_calls"]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""} and calls[0]["id"]
    assert "".join(p["function"]["arguments"] for p in calls[1:]) == '{"city": "Paris"}'
    assert stream.messages[-1]["tool_calls"][0]["id"] == calls[0]["id"]
    # tool_choice forces a call where the model would greet.
    hello = [{"role": "user", "content": "hello"}]
    assert chat(agent_model, hello, GREEDY, tools=[WEATHER], tokenizer=byte_level)[-1]["content"] == "Hello!"
    forced = chat(agent_model, hello, GREEDY, tools=[WEATHER], tool_choice="required", tokenizer=byte_level)
    assert forced == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": forced[0]["tool_calls"][0]["id"], "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]
    several = chat(agent_model, hello, GREEDY, tools=[WEATHER, TIME], tool_choice="required", tokenizer=byte_level)
    assert several[0]["tool_calls"][0]["function"]["name"] in ("get_weather", "get_time")
