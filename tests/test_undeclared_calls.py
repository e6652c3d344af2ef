"""A call the model makes to a function nobody declared (or any call when no tools were given) is never an
OpenAI tool call: not from the harmony header parser (a stray word is no recipient), nor from chat() and
stream_chat(), the server's Chat Completions and Responses API (streamed or not), nor the CLI. It is dropped,
logged, and the turn ends as a plain stop. The model is scripted to make such calls to the token."""
import io
import json
import logging

import openai
import pytest

from gpt_oss_triton.model import Tokenizer, harmony
from gpt_oss_triton.model import cli
from gpt_oss_triton.model.runtime.chat import chat, stream_chat
from gpt_oss_triton.model.runtime.sampling import SamplingParams
from gpt_oss_triton.model.server.app import create_app
from gpt_oss_triton.model.tool_calls import ReplyAssembler
from scripted_model import ScriptedModel
from test_server import TIMEOUT, serving

TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now."}}
CALL = "<|channel|>commentary to=functions.{} <|constrain|>json<|message|>{{\"city\": \"Paris\"}}<|call|>"
THINK = "<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant"
GREEDY = SamplingParams(max_new_tokens=200, temperature=0.0)


def script(context: str) -> str:
    turn = context.rsplit("<|start|>user<|message|>", 1)[-1]
    if "browse" in turn:  # a built-in tool's namespace, which this server does not run
        return THINK + '<|channel|>commentary to=browser.search <|constrain|>json<|message|>{"q": 1}<|call|>'
    if "stray" in turn:  # a sampled stray word in the header: no recipient, the text is the answer
        return "<|channel|>final \x81D<|message|>Plain text.<|return|>"
    if "nothing" in turn:
        return THINK + "<|return|>"
    return THINK + CALL.format("get_weather")  # a function that is not among the request's tools


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def scripted(tok):
    model = ScriptedModel.from_text(tok, script)
    model.tokenizer, model.backend = tok, "scripted"
    return model


@pytest.mark.parametrize("header", ["<|channel|>final \x81D", "<|channel|>commentary to=\x81D",
                                    "<|channel|>commentary junk words", "<|channel|>commentary to=functions."])
def test_a_stray_word_in_a_header_is_no_recipient(tok, header):
    (message,) = harmony.parse(tok, tok.encode(header + "<|message|>Hi<|end|>"))
    assert "recipient" not in message and message["content"] == "Hi"


@pytest.mark.parametrize("recipient", ["functions.get_weather", "functions.mcp:files.read", "browser.search",
                                       "browser", "python", "container.exec"])
def test_recipients_harmony_knows_are_kept(tok, recipient):
    for header in (f"<|channel|>commentary to={recipient} <|constrain|>json", f"<|channel|>commentary {recipient}"):
        (message,) = harmony.parse(tok, tok.encode(header + "<|message|>{}<|call|>"))
        assert message["recipient"] == recipient


@pytest.mark.parametrize("functions", [(), ("get_time",)])
def test_reply_assembler_drops_an_undeclared_call(tok, functions, caplog):
    reply, pieces = ReplyAssembler(tok, functions=functions), []
    for token in tok.encode(THINK + CALL.format("get_weather")):
        pieces += reply.feed(token)
    reply.finish()
    assert [kind for kind, _ in pieces] == ["analysis"] * len(pieces) and not reply.calls
    assert reply.stopped and reply.finish_reason("stop") == "stop"
    assert reply.messages() == [{"role": "assistant", "channel": "analysis", "content": "Hmm."}]
    assert reply.dropped == [{"recipient": "functions.get_weather", "content": '{"city": "Paris"}'}]
    why = "not one of the declared functions (get_time)" if functions else "no tools were given"
    assert f"dropped the model's call to 'functions.get_weather': {why}" in caplog.text
    # After a declared call (parallel calls), an undeclared one ends the reply and is not a call either.
    reply = ReplyAssembler(tok, functions=["get_time"], parallel_calls=True)
    for token in tok.encode(CALL.format("get_time") + "<|start|>assistant" + CALL.format("get_weather")):
        reply.feed(token)
    assert [c["function"]["name"] for c in reply.calls] == ["get_time"] and reply.stopped
    assert reply.dropped[0]["recipient"] == "functions.get_weather"


@pytest.mark.parametrize("tools", [None, [TIME]])
def test_chat_and_stream_chat_return_no_undeclared_call(scripted, tok, tools):
    for ask in ("weather?", "browse it"):
        messages = [{"role": "user", "content": ask}]
        reply = chat(scripted, messages, GREEDY, tools=tools)
        assert reply == [{"role": "assistant", "channel": "analysis", "content": "Hmm."}]
        stream = stream_chat(scripted, messages, GREEDY, tools=tools)
        assert {kind for kind, _ in stream} == {"analysis"} and stream.finish_reason == "stop"
        assert [call["recipient"] for call in stream.dropped_calls] == \
            ["browser.search" if ask == "browse it" else "functions.get_weather"]


@pytest.fixture(scope="module")
def client(scripted, tok):
    with serving(create_app(scripted, tok, model_name="scripted", max_batch=2, max_len=4000)) as base:
        with openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=TIMEOUT) as c:
            yield c


@pytest.mark.parametrize("tools", [None, [TIME]])
@pytest.mark.parametrize("ask", ["weather?", "browse it"])
def test_chat_completions_return_no_undeclared_call(client, tools, ask, caplog):
    kw = dict(model="scripted", messages=[{"role": "user", "content": ask}], temperature=0,
              **({"tools": tools} if tools else {}))
    choice = client.chat.completions.create(**kw).choices[0]
    assert (choice.finish_reason, choice.message.content, choice.message.tool_calls) == ("stop", "", None)
    assert choice.message.model_extra["reasoning_content"] == "Hmm."
    assert "dropped the model's call to" in caplog.text
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_completions_stray_header_word_is_the_answer(client):
    choice = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "stray"}],
                                            temperature=0).choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == ("Plain text.", None, "stop")


# Not strict: a strict tool's grammar would keep the model from writing the undeclared call at all.
@pytest.mark.parametrize("tools", [None, [{"type": "function", "name": "get_time", "strict": False}]])
def test_responses_return_no_undeclared_call(client, tools):
    kw = dict(model="scripted", input="weather?", temperature=0, **({"tools": tools} if tools else {}))
    response = client.responses.create(**kw)
    assert response.status == "completed" and [item.type for item in response.output] == ["reasoning"]
    events = list(client.responses.create(stream=True, **kw))
    assert not [e for e in events if "function_call" in e.type]
    assert events[-1].type == "response.completed"
    assert [item.type for item in events[-1].response.output] == ["reasoning"]


def _cli(monkeypatch, capsys, scripted, tok, argv, stdin=""):
    monkeypatch.setattr(cli, "_load", lambda args, need_tokenizer=True: (scripted, tok))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert cli.main(argv) == 0
    return capsys.readouterr()


def test_generate_chat_shows_no_call_and_says_why(monkeypatch, capsys, scripted, tok):
    out, err = _cli(monkeypatch, capsys, scripted, tok, ["generate", "--chat", "--prompt", "weather?",
                                                         "--temperature", "0"])
    assert out == "[analysis] Hmm.\n" and "get_weather" not in out
    assert "[the model called 'functions.get_weather', which is no tool here: the call was dropped]" in err
    assert "[the model ended its turn without an answer]" in err


def test_chat_turns_never_end_in_silence(monkeypatch, capsys, scripted, tok):
    """A reply with no answer says why: a dropped call, no answer within the limit, reasoning hidden; /reset
    says the conversation starts over."""
    out, err = _cli(monkeypatch, capsys, scripted, tok, ["chat", "--hide-reasoning", "--temperature", "0",
                                                         "--max-new-tokens", "12"], "weather?\n/reset\n")
    assert "Hmm" not in out and "get_weather" not in out
    assert "[no answer within the 12-token limit (--max-new-tokens); its reasoning is hidden (--hide-reasoning)]" \
        in err
    assert "[conversation reset: the next message starts a new one]" in err
    out, err = _cli(monkeypatch, capsys, scripted, tok, ["chat", "--temperature", "0"], "browse it\nnothing\n")
    assert "[the model called 'browser.search', which is no tool here: the call was dropped]" in err
    assert err.count("[the model ended its turn without an answer]") == 2


def test_readme_agent_loop_says_when_there_is_no_answer(scripted, capsys):
    """The README's agent loop, run as written on a reply with no answer: it must not print the user's message
    back as if it were the answer."""
    readme = (cli.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("so an agent loop is plain Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    messages = [{"role": "user", "content": "nothing to say"}]
    code = code.replace('messages = [{"role": "user", "content": "What is the weather in Paris?"}]\n', "")
    exec(code, {"chat": chat, "model": scripted, "params": GREEDY, "messages": messages})
    out = capsys.readouterr().out
    assert "nothing to say" not in out and "Hmm." not in out and "no answer" in out


@pytest.mark.parametrize("stream", [False, True])
def test_agents_sdk_is_never_asked_for_a_tool_it_lacks(client, stream):
    """The Agents SDK gets no call to a tool it lacks (it failed the run: "Tool get_weather not found in agent
    clock"): the run ends with the reply's (empty) answer."""
    import asyncio

    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, \
        set_tracing_disabled

    set_tracing_disabled(True)

    @function_tool(strict_mode=False)  # strict, its grammar would keep the model from the other call at all
    def get_time() -> str:
        """The time now."""
        return "noon"

    async def main():
        async with openai.AsyncOpenAI(base_url=str(client.base_url), api_key="none", max_retries=0,
                                      timeout=TIMEOUT) as c:
            agent = Agent(name="clock", tools=[get_time], model=OpenAIChatCompletionsModel(model="scripted",
                                                                                           openai_client=c),
                          model_settings=ModelSettings(temperature=0))
            if not stream:
                return (await Runner.run(agent, "weather?", max_turns=3)).final_output
            result = Runner.run_streamed(agent, "weather?", max_turns=3)
            async for _ in result.stream_events():
                pass
            return result.final_output

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == ""
