"""Tool calling end to end on the loopback: the openai client, the OpenAI Agents SDK and Open WebUI's request
bodies against the server, over Chat Completions and the Responses API. The model is a ScriptedModel whose
reply depends on the prompt (a call, parallel calls, an answer that quotes the tool's result), so each shape
can be checked to the character; the engine, sampler, harmony and the server are the real ones."""
import asyncio
import json
import re

import httpx
import openai
import pytest

from gpt_oss_triton.model import Tokenizer, harmony
from gpt_oss_triton.model.server.app import create_app
from scripted_model import ScriptedModel
from test_server import TIMEOUT, serving

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now."}}
HEADER = "<|channel|>commentary to=functions.{} <|constrain|>json<|message|>"
CALL = HEADER.format("get_weather") + '{"city": "Paris"}<|call|>'
THINK = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant"
PARALLEL = (CALL + "<|start|>assistant" + HEADER.format("get_weather") + '{"city": "Rome"}<|call|>'
            "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>")
RESULT = re.compile(r"<\|start\|>functions\.\w+ to=assistant<\|channel\|>commentary<\|message\|>(.*?)<\|end\|>", re.S)


def script(context: str) -> str:
    """What the scripted model writes after `context`, by what its last user message asks."""
    if context.endswith("<|constrain|>json<|message|>"):  # a call's header (forced or its own): the arguments
        return '{"city": "Paris"}<|call|>'
    turn = context.rsplit("<|start|>user<|message|>", 1)[-1]
    results = RESULT.findall(turn)
    if results:  # the tools answered: quote them
        return f"<|channel|>final<|message|>The tools said: {'; '.join(results)}.<|return|>"
    if "parallel" in turn:
        return THINK + PARALLEL
    if "broken" in turn:
        return HEADER.format("get_weather") + '{"city": Paris<|call|>'
    if "weather" in turn.lower():
        return THINK + "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant" + CALL
    if "hello" in turn.lower():
        return "<|channel|>final<|message|>Hello there!<|return|>"
    return "<|channel|>analysis<|message|>Just chat.<|end|><|start|>assistant<|channel|>final<|message|>Hi!<|return|>"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def scripted(tok):
    return ScriptedModel.from_text(tok, script)


@pytest.fixture(scope="module")
def url(scripted, tok):
    with serving(create_app(scripted, tok, model_name="scripted", max_batch=4, max_len=6000)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT) as c:
        yield c


def _chat(client, content, **kw):
    kw.setdefault("tools", [WEATHER, TIME])
    kw.setdefault("temperature", 0)  # where a constraint rules out the scripted token, the rest tie
    return client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": content}], **kw)


def _joined(stream) -> dict:
    """A streamed chat reply put together as a client does; checks the streamed tool-call shape on the way."""
    out = {"content": "", "reasoning": "", "calls": [], "finish": None}
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            out["content"] += delta.content or ""
            out["reasoning"] += (delta.model_extra or {}).get("reasoning_content") or ""
            assert (delta.model_extra or {}).get("reasoning_content") == (delta.model_extra or {}).get("reasoning")
            for piece in delta.tool_calls or []:
                if piece.index == len(out["calls"]):  # a new call: id and name come first, arguments after
                    assert piece.id and piece.type == "function" and piece.function.name
                    assert piece.function.arguments == ""
                    out["calls"].append({"id": piece.id, "name": piece.function.name, "arguments": ""})
                else:
                    assert piece.id is None and piece.function.name is None
                    out["calls"][piece.index]["arguments"] += piece.function.arguments
            out["finish"] = choice.finish_reason or out["finish"]
    return out


def test_a_tool_call_in_openai_shapes(client):
    reply = _chat(client, "What is the weather in Paris?")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."  # the preamble (commentary without a recipient)
    assert choice.message.model_extra["reasoning_content"] == choice.message.model_extra["reasoning"] == \
        "Need the weather."
    (call,) = choice.message.tool_calls
    assert (call.type, call.function.name, call.function.arguments) == ("function", "get_weather",
                                                                         '{"city": "Paris"}')
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    streamed = _joined(_chat(client, "What is the weather in Paris?", stream=True))
    assert (streamed["content"], streamed["reasoning"], streamed["finish"]) == ("Checking.", "Need the weather.",
                                                                               "tool_calls")
    assert [(c["name"], c["arguments"]) for c in streamed["calls"]] == [("get_weather", '{"city": "Paris"}')]


def test_arguments_that_are_not_json_come_back_as_written(client):
    (call,) = _chat(client, "weather, broken").choices[0].message.tool_calls
    assert call.function.arguments == '{"city": Paris'
    assert _joined(_chat(client, "weather, broken", stream=True))["calls"][0]["arguments"] == '{"city": Paris'


def test_parallel_calls_when_asked_for(client):
    both = [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}')]
    reply = _chat(client, "weather, in parallel", parallel_tool_calls=True)
    calls = reply.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == both
    assert len({c.id for c in calls}) == 2 and reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.content is None  # no preamble: null beside the calls
    streamed = _joined(_chat(client, "weather, in parallel", parallel_tool_calls=True, stream=True))
    assert [(c["name"], c["arguments"]) for c in streamed["calls"]] == both and streamed["finish"] == "tool_calls"
    # Not asked for: gpt-oss ends its turn at the first call.
    single = _chat(client, "weather, in parallel")
    assert [c.function.arguments for c in single.choices[0].message.tool_calls] == ['{"city": "Paris"}']


def test_tool_choice_forces_a_call(client, scripted, tok):
    # The scripted model wants to greet; the forced header leaves it only the arguments to write.
    assert _chat(client, "hello").choices[0].message.content == "Hello there!"
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        for tools in ([WEATHER], [WEATHER, TIME]) if choice == "required" else ([WEATHER, TIME],):
            reply = _chat(client, "hello", tools=tools, tool_choice=choice)
            (call,) = reply.choices[0].message.tool_calls
            assert reply.choices[0].finish_reason == "tool_calls", (choice, tools)
            assert call.function.arguments == '{"city": "Paris"}'
            assert call.function.name == ("get_time" if len(tools) == 2 and choice == "required" else "get_weather")
    # required with several tools: the constraint picked a name token by token (the lowest id where the
    # script's own choice was ruled out: "get_t" before "get_w"). Streamed, the same.
    streamed = _joined(_chat(client, "hello", tool_choice="required", stream=True))
    assert [c["name"] for c in streamed["calls"]] == ["get_time"] and streamed["finish"] == "tool_calls"
    # none: the tools are not in the prompt at all.
    before = len(scripted.contexts)
    _chat(client, "hello", tool_choice="none")
    assert scripted.contexts[before] == harmony.render(tok, [{"role": "user", "content": "hello"}])


def test_agent_loop_history_renders_as_harmony(client, scripted, tok):
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "Need the weather.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21C"},
    ]
    for variant in (history, [*history[:2], {k: v for k, v in history[2].items() if k != "content"}, history[3]]):
        before = len(scripted.contexts)
        reply = client.chat.completions.create(model="scripted", messages=variant, tools=[WEATHER], temperature=0)
        assert reply.choices[0].message.content == "The tools said: Sunny, 21C."
        assert reply.choices[0].finish_reason == "stop"
        assert scripted.contexts[before] == harmony.render(tok, history, tools=[WEATHER])


def test_reasoning_fields_are_left_out_when_there_is_none(url):
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 50,
            "temperature": 0}
    message = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello there!"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=TIMEOUT) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert all(None not in c["choices"][0]["delta"].values() for c in chunks if c["choices"])


@pytest.mark.parametrize("change, param, message", [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools",
     r"tools\[0\].function.name is missing"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "city: str"}}]}, "tools",
     r"tools\[0\].function.parameters must be a JSON Schema object"),
    ({"tools": [WEATHER, WEATHER]}, "tools", r"tools\[1\].function.name 'get_weather' is a duplicate of tools\[0\]"),
    ({"tools": [{"type": "web_search"}]}, "tools", r"tools\[0\].type 'web_search' is not supported"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice",
     "tool_choice names the function 'get_time', which is not in tools"),
    ({"tool_choice": "sometimes"}, "tool_choice", "tool_choice must be 'auto', 'none', 'required'"),
    ({"tools": [], "tool_choice": "required"}, "tool_choice", "tool_choice 'required' needs at least one tool"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]},
     "messages", r"message 1 \(tool\): tool_call_id 'call_9' matches no earlier tool call"),
])
def test_bad_tools_get_a_400_naming_the_field(url, change, param, message):
    body = {"model": "scripted", "messages": [{"role": "user", "content": "q"}], "tools": [WEATHER], **change}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert re.search(message, error["message"]), error["message"]


# Open WebUI 0.12.4 with its defaults: native function calling, its built-in tools (specs made from the Python
# signatures by pydantic and LangChain's convert_to_openai_function: no titles, Optional[...] cleaned to the
# plain type, reST :param lines as descriptions), streamed replies; then the follow-up with the tool's result
# (assistant content "" beside tool_calls), and its non-streamed title/tags task.
OPEN_WEBUI_TOOLS = [
    {"type": "function", "function": {"name": "get_current_timestamp",
                                      "description": "Get the current Unix timestamp in seconds.",
                                      "parameters": {"properties": {}, "type": "object"}}},
    {"type": "function", "function": {
        "name": "calculate_timestamp",
        "description": "Get the current Unix timestamp, optionally adjusted by days, weeks, months, or years.\n"
                       "Use this to calculate timestamps for date filtering in search functions.\n"
                       'Examples: "last week" = weeks_ago=1, "3 days ago" = days_ago=3, "a year ago" = years_ago=1',
        "parameters": {"properties": {
            "days_ago": {"default": 0, "description": "Number of days to subtract from current time (default: 0)",
                         "type": "integer"},
            "weeks_ago": {"default": 0, "description": "Number of weeks to subtract from current time (default: 0)",
                          "type": "integer"}}, "type": "object"}}},
    {"type": "function", "function": {
        "name": "search_chats", "description": "Search the user's previous chats by title and content.",
        "parameters": {"properties": {
            "query": {"description": "The search query", "type": "string"},
            "count": {"default": 5, "description": "Maximum number of results", "type": "integer"},
            "start_timestamp": {"description": "Only chats updated after this time", "type": "integer"}},
            "required": ["query"], "type": "object"}}},
    {"type": "function", "function": {
        "name": "view_chat", "description": "Get the full message history of a chat.",
        "parameters": {"properties": {"chat_id": {"description": "The chat's id", "type": "string"}},
                       "required": ["chat_id"], "type": "object"}}},
]


def test_open_webui_default_requests(url):
    chat = f"{url}/v1/chat/completions"
    first = {"model": "scripted", "stream": True, "tools": OPEN_WEBUI_TOOLS,
             "messages": [{"role": "user", "content": "Hi! How are you?"}]}
    with httpx.stream("POST", chat, json=first, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        lines = list(r.iter_lines())
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert [line for line in lines if line][-1] == "data: [DONE]"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hi!"
    assert "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks) == "Just chat."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The follow-up after a native tool call, as Open WebUI sends it.
    follow_up = {**first, "messages": [
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_abc", "type": "function", "function": {
            "name": "get_current_timestamp", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"current_timestamp": 1764590400}'}]}
    with httpx.stream("POST", chat, json=follow_up, timeout=TIMEOUT) as r:
        text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in r.iter_lines() if line.startswith("data: {") and '"choices": [{' in line)
    assert text == 'The tools said: {"current_timestamp": 1764590400}.'
    # Its title/tags task: not streamed; the reply must have no null reasoning fields.
    task = {"model": "scripted", "stream": False, "messages": [{"role": "user", "content": "### Task:\nhello"}]}
    message = httpx.post(chat, json=task, timeout=TIMEOUT).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello there!"}


# The Responses API.

RESPONSES_WEATHER = {"type": "function", "name": "get_weather", "description": "Weather now in a city.",
                     "parameters": WEATHER["function"]["parameters"]}


def test_responses_tool_call_and_answer(client):
    first = client.responses.create(model="scripted", input="What is the weather in Paris?",
                                    instructions="Be brief.", tools=[RESPONSES_WEATHER],
                                    reasoning={"effort": "low"}, temperature=0)
    assert first.status == "completed"
    assert [item.type for item in first.output] == ["reasoning", "message", "function_call"]
    reasoning, preamble, call = first.output
    assert reasoning.content[0].text == "Need the weather." and preamble.content[0].text == "Checking."
    assert (call.name, call.arguments, call.status) == ("get_weather", '{"city": "Paris"}', "completed")
    assert first.usage.output_tokens_details.reasoning_tokens > 0
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    # The client runs the tool and answers with previous_response_id: the server keeps the conversation.
    second = client.responses.create(model="scripted", previous_response_id=first.id, tools=[RESPONSES_WEATHER],
                                     temperature=0,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "Sunny, 21C"}])
    assert second.output_text == "The tools said: Sunny, 21C." and second.previous_response_id == first.id
    # ...or sends the whole conversation back as items, as the Agents SDK does.
    items = [{"role": "user", "content": "What is the weather in Paris?"},
             *[item.model_dump(exclude_none=True) for item in first.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"}]
    again = client.responses.create(model="scripted", input=items, tools=[RESPONSES_WEATHER], temperature=0)
    assert again.output_text == "The tools said: Sunny, 21C."
    assert client.responses.retrieve(second.id).output_text == second.output_text


def test_responses_stream_events(client):
    kw = dict(model="scripted", input="What is the weather in Paris?", tools=[RESPONSES_WEATHER], temperature=0)
    events = list(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.item.type for e in events if e.type == "response.output_item.added"] == \
        ["reasoning", "message", "function_call"]
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "Need the weather."
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Checking."
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == \
        '{"city": "Paris"}'
    final = events[-1].response
    whole = client.responses.create(**kw)
    assert [i.model_dump(exclude={"id", "call_id"}) for i in final.output] == \
        [i.model_dump(exclude={"id", "call_id"}) for i in whole.output]
    # The SDK's own stream helper accumulates the same response.
    with client.responses.stream(**kw) as stream:
        assert stream.get_final_response().output[2].arguments == '{"city": "Paris"}'
    cut = client.responses.create(max_output_tokens=5, **kw)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("change, param", [
    ({"previous_response_id": "resp_nope"}, "previous_response_id"),
    ({"input": [{"type": "input_image_ref"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, "input"),
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"tool_choice": {"type": "function", "name": "get_time"}}, "tool_choice"),
    ({"reasoning": {"effort": "max"}}, "reasoning"),
    ({"background": True}, "background"),
])
def test_responses_bad_requests(url, change, param):
    body = {"model": "scripted", "input": "hello", "tools": [RESPONSES_WEATHER], **change}
    response = httpx.post(f"{url}/v1/responses", json=body, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


# The OpenAI Agents SDK: an agent with a function tool that really runs, then answers with its result.

def _run_agent(url, model_class, stream: bool) -> tuple[str, list[str]]:
    from agents import Agent, ModelSettings, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    ran = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather now in a city."""
        ran.append(city)
        return f"Sunny in {city}, 21C"

    async def main():
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=TIMEOUT) as c:
            # temperature 0: greedy picks the scripted token without the sampling kernel (Triton's
            # interpreter on a CPU), and it shows the setting reaches the server.
            agent = Agent(name="forecaster", instructions="Answer with the tools.", tools=[get_weather],
                          model=model_class(model="scripted", openai_client=c),
                          model_settings=ModelSettings(temperature=0))
            if not stream:
                return (await Runner.run(agent, "What is the weather in Paris?")).final_output
            result = Runner.run_streamed(agent, "What is the weather in Paris?")
            async for _ in result.stream_events():
                pass
            return result.final_output

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT)), ran


@pytest.mark.parametrize("stream", [False, True])
def test_agents_sdk_over_chat_completions(url, stream):
    from agents import OpenAIChatCompletionsModel

    assert _run_agent(url, OpenAIChatCompletionsModel, stream) == ("The tools said: Sunny in Paris, 21C.", ["Paris"])


@pytest.mark.parametrize("stream", [False, True])
def test_agents_sdk_over_responses(url, stream):
    from agents import OpenAIResponsesModel

    assert _run_agent(url, OpenAIResponsesModel, stream) == ("The tools said: Sunny in Paris, 21C.", ["Paris"])
