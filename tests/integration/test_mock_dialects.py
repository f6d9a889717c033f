"""``gateway mock --dialect openai|anthropic|azure`` driven by the official SDKs, and the embedded default's
tools and structured output through the gateway.

Every Anthropic body and stream event is validated against the ``anthropic`` SDK's own types with no
field the SDK does not know (``_strict``), so the mock cannot drift into a shape no provider sends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import BaseModel, Field, TypeAdapter

from .conftest import Gateway
from .helpers import HOST, ServerProcess, free_port

pytestmark = pytest.mark.timeout(90)

KEY = "mock-secret"
WEATHER = {"name": "get_weather", "description": "the weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                             "days": {"type": "integer", "minimum": 1, "maximum": 5}},
                            "required": ["city"]}}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}},
                                             "required": ["tz"]}}


class City(BaseModel):
    name: str
    population: int = Field(ge=0)
    districts: list[str] = Field(min_length=1)
    capital: bool


def _start(tmp: Path, name: str, *extra: str) -> Iterator[int]:
    port = free_port()
    proc = ServerProcess(name, ["mock", "--port", str(port), "-q", *extra], tmp, port).start()
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def anthropic_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from _start(tmp_path_factory.mktemp("mock-anthropic"), "mock-anthropic", "--dialect", "anthropic",
                      "--api-key", KEY, "--chunks", "3")


@pytest.fixture(scope="module")
def azure_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from _start(tmp_path_factory.mktemp("mock-azure"), "mock-azure", "--dialect", "azure", "--api-key", KEY)


@pytest.fixture
def claude(anthropic_port: int) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=f"http://{HOST}:{anthropic_port}", api_key=KEY, max_retries=0, timeout=10.0)
    try:
        yield c
    finally:
        c.close()


def _strict(model: Any, where: str = "$") -> None:
    """No field anywhere in ``model`` that the SDK's type does not declare."""
    if isinstance(model, BaseModel):
        assert not model.model_extra, f"{where}: fields the SDK does not know: {sorted(model.model_extra)}"
        for name in type(model).model_fields:
            _strict(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list):
        for i, item in enumerate(model):
            _strict(item, f"{where}[{i}]")


_EVENT = TypeAdapter(RawMessageStreamEvent)


def _raw_events(port: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    """The SSE events of a streamed /v1/messages, each validated against the SDK's event union."""
    hdrs = {"x-api-key": KEY, "anthropic-version": "2023-06-01", **(headers or {})}
    with httpx.Client(timeout=10.0) as h:
        resp = h.post(f"http://{HOST}:{port}/v1/messages", json={**body, "stream": True}, headers=hdrs)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    events: list[tuple[str, Any]] = []
    for block in resp.text.split("\n\n"):
        if not block.strip():
            continue
        name_line, data_line = block.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        if name == "ping":
            assert data == {"type": "ping"}
        else:
            event = _EVENT.validate_python(data)
            _strict(event)
        events.append((name, data))
    return events


def _dump(blocks: list[Any]) -> list[dict[str, Any]]:
    """Content blocks as wire dicts (the stream helper's ``ParsedTextBlock`` adds a local field)."""
    return [b.model_dump(exclude={"parsed_output"}, exclude_none=True) for b in blocks]


def _msg(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- Anthropic ---------------------------------------------------------------------------------------------


def test_anthropic_message_and_headers(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(model="claude-mock", max_tokens=100, messages=_msg("hello"))
    msg = raw.parse()
    _strict(msg)
    assert msg.id.startswith("msg_") and msg.model == "claude-mock" and msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text" and len(msg.content[0].text.split()) == 12
    assert msg.usage.output_tokens == 12 and msg.usage.input_tokens > 0
    assert raw.headers["request-id"].startswith("req_")
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert int(raw.headers[f"anthropic-ratelimit-{kind}-remaining"]) < int(
            raw.headers[f"anthropic-ratelimit-{kind}-limit"])
        assert raw.headers[f"anthropic-ratelimit-{kind}-reset"].endswith("Z")
    again = claude.messages.create(model="claude-mock", max_tokens=100, messages=_msg("hello"))
    assert again.content == msg.content and again.id != msg.id


def test_anthropic_stop_reasons(claude: anthropic.Anthropic) -> None:
    short = claude.messages.create(model="m", max_tokens=3, messages=_msg("hello"))
    assert short.stop_reason == "max_tokens" and len(short.content[0].text.split()) == 3
    full = claude.messages.create(model="m", max_tokens=100, messages=_msg("hello")).content[0].text
    word = full.split()[4]
    stopped = claude.messages.create(model="m", max_tokens=100, messages=_msg("hello"), stop_sequences=[word])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert stopped.content[0].text == full[:full.index(word)]
    refused = claude.messages.create(model="m", max_tokens=100, messages=_msg("do it !refuse"))
    assert refused.stop_reason == "refusal" and refused.content == []
    with claude.messages.stream(model="m", max_tokens=3, messages=_msg("hello")) as stream:
        assert stream.get_final_message().stop_reason == "max_tokens"
    with claude.messages.stream(model="m", max_tokens=100, messages=_msg("hello"), stop_sequences=[word]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", word)
    with claude.messages.stream(model="m", max_tokens=100, messages=_msg("do it !refuse")) as stream:
        assert stream.get_final_message().stop_reason == "refusal"


def test_anthropic_stream_matches_the_message(claude: anthropic.Anthropic, anthropic_port: int) -> None:
    body = {"model": "m", "max_tokens": 100, "messages": _msg("stream me")}
    whole = claude.messages.create(**body)
    with claude.messages.stream(**body) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    _strict(final)
    assert len(texts) == 3 and "".join(texts) == whole.content[0].text
    assert _dump(final.content) == _dump(whole.content) and final.usage.output_tokens == whole.usage.output_tokens
    events = _raw_events(anthropic_port, body)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1] == "content_block_start" and names[2] == "ping"
    assert events[0][1]["message"]["usage"]["input_tokens"] == whole.usage.input_tokens
    delta = events[-2][1]
    assert delta["usage"]["output_tokens"] == whole.usage.output_tokens  # cumulative, not a difference
    assert delta["delta"]["stop_reason"] == "end_turn"


def test_anthropic_tools(claude: anthropic.Anthropic, anthropic_port: int) -> None:
    forced = claude.messages.create(model="m", max_tokens=200, messages=_msg("weather?"), tools=[WEATHER, TIME],
                                    tool_choice={"type": "any"})
    _strict(forced)
    assert forced.stop_reason == "tool_use"
    (use,) = forced.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, WEATHER["input_schema"])
    named = claude.messages.create(model="m", max_tokens=200, messages=_msg("time?"), tools=[WEATHER, TIME],
                                   tool_choice={"type": "tool", "name": "get_time"})
    assert [b.name for b in named.content if b.type == "tool_use"] == ["get_time"]
    assert claude.messages.create(model="m", max_tokens=200, messages=_msg("!tool get_time"), tools=[WEATHER, TIME],
                                  tool_choice={"type": "none"}).stop_reason == "end_turn"
    # the cue under auto, two tools: two tool_use blocks; streamed, the SDK accumulates the same inputs
    body: dict[str, Any] = {"model": "m", "max_tokens": 200, "messages": _msg("both !tool get_weather get_time"),
                            "tools": [WEATHER, TIME]}
    both = claude.messages.create(**body)
    assert [b.name for b in both.content if b.type == "tool_use"] == ["get_weather", "get_time"]
    with claude.messages.stream(**body) as stream:
        final = stream.get_final_message()
    assert _dump(final.content) == _dump(both.content) and final.stop_reason == "tool_use"
    deltas = [d for n, d in _raw_events(anthropic_port, body) if n == "content_block_delta"]
    assert {d["delta"]["type"] for d in deltas} == {"input_json_delta"}
    assert {d["index"] for d in deltas} == {0, 1}
    # the result goes back; the answer quotes it
    turn = [*body["messages"], {"role": "assistant", "content": [b.model_dump() for b in both.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": both.content[1].id,
                                          "content": "12:00 CET"}]}]
    reply = claude.messages.create(model="m", max_tokens=200, messages=turn, tools=[WEATHER, TIME])
    assert reply.stop_reason == "end_turn" and "get_time" in reply.content[0].text
    assert "12:00 CET" in reply.content[0].text


def test_anthropic_thinking(claude: anthropic.Anthropic, anthropic_port: int) -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 2048, "messages": _msg("think"),
                            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    msg = claude.messages.create(**body)
    _strict(msg)
    thinking, text = msg.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    assert text.type == "text"
    with claude.messages.stream(**body) as stream:
        final = stream.get_final_message()
    assert _dump(final.content) == _dump(msg.content)
    kinds = [d["delta"]["type"] for n, d in _raw_events(anthropic_port, body) if n == "content_block_delta"]
    assert "thinking_delta" in kinds and kinds.count("signature_delta") == 1 and "text_delta" in kinds
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(**{**body, "thinking": {"type": "enabled", "budget_tokens": 100}})


def test_anthropic_structured_output_and_cache(claude: anthropic.Anthropic) -> None:
    schema = {**City.model_json_schema(), "additionalProperties": False}
    msg = claude.messages.create(model="m", max_tokens=500, messages=_msg("a city"),
                                 extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    City.model_validate_json(msg.content[0].text)
    system = [{"type": "text", "text": "You are a careful assistant. " * 40, "cache_control": {"type": "ephemeral"}}]
    wrote = claude.messages.create(model="m", max_tokens=50, system=system, messages=_msg("hi"))
    assert wrote.usage.cache_creation_input_tokens and not wrote.usage.cache_read_input_tokens
    assert wrote.usage.cache_creation is not None
    assert wrote.usage.cache_creation.ephemeral_5m_input_tokens == wrote.usage.cache_creation_input_tokens
    read = claude.messages.create(model="m", max_tokens=50, system=system, messages=_msg("hi !cache read"))
    assert read.usage.cache_read_input_tokens == wrote.usage.cache_creation_input_tokens
    assert not read.usage.cache_creation_input_tokens
    plain = claude.messages.create(model="m", max_tokens=50, messages=_msg("hi"))
    assert not plain.usage.cache_creation_input_tokens and not plain.usage.cache_read_input_tokens


def test_anthropic_errors(claude: anthropic.Anthropic, anthropic_port: int) -> None:
    with pytest.raises(anthropic.OverloadedError) as over:
        claude.messages.create(model="m", max_tokens=10, messages=_msg("!mock status=529"))
    assert over.value.status_code == 529 and over.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="m", max_tokens=10, messages=_msg("hi"), extra_headers={"x-mock": "status=429"})
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    with pytest.raises(anthropic.InternalServerError), claude.messages.stream(
            model="m", max_tokens=10, messages=_msg("!mock status=500")) as stream:
        stream.get_final_message()
    bad_key = anthropic.Anthropic(base_url=f"http://{HOST}:{anthropic_port}", api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        bad_key.messages.create(model="m", max_tokens=10, messages=_msg("hi"))
    bad_key.close()
    assert denied.value.body == {"type": "error", "error": {"type": "authentication_error",  # type: ignore[comparison-overlap]
                                                            "message": "invalid x-api-key"},
                                 "request_id": denied.value.request_id}
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        claude.messages.create(model="m", messages=_msg("hi"), max_tokens=anthropic.NOT_GIVEN)  # type: ignore[call-overload]
    # no anthropic-version header: what Anthropic answers
    with httpx.Client(timeout=10.0) as h:
        resp = h.post(f"http://{HOST}:{anthropic_port}/v1/messages", headers={"x-api-key": KEY},
                      json={"model": "m", "max_tokens": 5, "messages": _msg("hi")})
    assert resp.status_code == 400
    assert resp.json()["error"] == {"type": "invalid_request_error", "message": "anthropic-version: header is required"}


def test_anthropic_failure_directives(claude: anthropic.Anthropic, anthropic_port: int) -> None:
    with pytest.raises((anthropic.APIConnectionError, httpx.HTTPError)), claude.messages.stream(
            model="m", max_tokens=100, messages=_msg("!mock cut=3 rest of the prompt")) as stream:
        stream.get_final_message()
    with pytest.raises(ValueError, match="Expecting"):  # the SDK's JSON decoder on the body that is not JSON
        claude.messages.create(model="m", max_tokens=10, messages=_msg("!mock garbage=1"))
    hung = anthropic.Anthropic(base_url=f"http://{HOST}:{anthropic_port}", api_key=KEY, max_retries=0, timeout=0.5)
    with pytest.raises(anthropic.APITimeoutError):
        hung.messages.create(model="m", max_tokens=10, messages=_msg("!mock hang=1"))
    hung.close()


def test_anthropic_count_tokens_and_models(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="m", messages=_msg("count these words please"))
    created = claude.messages.create(model="m", max_tokens=5, messages=_msg("count these words please"))
    assert counted.input_tokens == created.usage.input_tokens
    models = claude.models.list()
    assert {m.id for m in models.data} >= {"mock-1"}
    for m in models.data:
        _strict(m)
    assert claude.models.retrieve("mock-1").id == "mock-1"
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("nope")
    _strict(Message.model_validate(created.model_dump()))


# --- Azure OpenAI ------------------------------------------------------------------------------------------


@pytest.fixture
def azure(azure_port: int) -> Iterator[openai.AzureOpenAI]:
    c = openai.AzureOpenAI(azure_endpoint=f"http://{HOST}:{azure_port}", api_key=KEY, api_version="2024-10-21",
                           max_retries=0, timeout=10.0)
    try:
        yield c
    finally:
        c.close()


def test_azure_chat_with_content_filters(azure: openai.AzureOpenAI) -> None:
    raw = azure.chat.completions.with_raw_response.create(model="my-gpt4o", messages=_msg("hello"))
    done = raw.parse()
    assert done.model == "my-gpt4o" and raw.headers["x-ms-deployment-name"] == "my-gpt4o"
    assert raw.headers["apim-request-id"]
    extra = done.model_extra or {}
    assert extra["prompt_filter_results"][0]["content_filter_results"]["hate"] == {"filtered": False,
                                                                                  "severity": "safe"}
    assert (done.choices[0].model_extra or {})["content_filter_results"]["violence"]["filtered"] is False
    chunks = list(azure.chat.completions.create(model="my-gpt4o", messages=_msg("hello"), stream=True))
    first = chunks[0]
    assert first.choices == [] and first.id == "" and (first.model_extra or {})["prompt_filter_results"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == done.choices[0].message.content
    vec = azure.embeddings.create(model="my-embedder", input="abc")
    assert vec.model == "my-embedder" and len(vec.data[0].embedding) == 16


def test_azure_tools_and_structured_output(azure: openai.AzureOpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]
    done = azure.chat.completions.create(model="dep", messages=_msg("weather?"), tools=tools,  # type: ignore[arg-type]
                                         tool_choice="required")
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["input_schema"])  # type: ignore[union-attr]
    parsed = azure.chat.completions.parse(model="dep", messages=_msg("a city"), response_format=City)
    assert isinstance(parsed.choices[0].message.parsed, City)


def test_azure_auth_versions_and_v1(azure_port: int) -> None:
    base = f"http://{HOST}:{azure_port}"
    with httpx.Client(timeout=10.0) as h:
        body = {"messages": _msg("hi")}
        missing = h.post(f"{base}/openai/deployments/d/chat/completions", json=body, headers={"api-key": KEY})
        assert missing.status_code == 404
        assert missing.json() == {"error": {"code": "404", "message": "Resource not found"}}
        bad = h.post(f"{base}/openai/deployments/d/chat/completions?api-version=banana", json=body,
                     headers={"api-key": KEY})
        assert bad.status_code == 400 and bad.json()["error"]["message"] == "API version not supported"
    wrong = openai.AzureOpenAI(azure_endpoint=base, api_key="wrong", api_version="2024-10-21", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="d", messages=_msg("hi"))
    wrong.close()
    entra = openai.AzureOpenAI(azure_endpoint=base, azure_ad_token=KEY, api_version="2024-10-21", max_retries=0)
    assert entra.chat.completions.create(model="d", messages=_msg("hi")).model == "d"
    entra.close()
    v1 = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="unused", default_headers={"api-key": KEY},
                       max_retries=0)
    assert v1.chat.completions.create(model="dep-v1", messages=_msg("hi")).model == "dep-v1"
    assert {m.id for m in v1.models.list()} >= {"mock-1"}
    v1.close()


# --- the OpenAI dialect on its own, with a key ---------------------------------------------------------


def test_openai_dialect_key(tmp_path: Path) -> None:
    for port in _start(tmp_path, "mock-openai-key", "--api-key", KEY):
        good = openai.OpenAI(base_url=f"http://{HOST}:{port}/v1", api_key=KEY, max_retries=0)
        tools = [{"type": "function", "function": {"name": "get_time", "parameters": TIME["input_schema"]}}]
        done = good.chat.completions.create(model="m", messages=_msg("!tool"), tools=tools)  # type: ignore[arg-type]
        assert done.choices[0].finish_reason == "tool_calls"
        good.close()
        bad = openai.OpenAI(base_url=f"http://{HOST}:{port}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        bad.close()


# --- the embedded default through the gateway ----------------------------------------------------------


def test_default_gateway_structured_output_and_tools(default_gateway: Gateway) -> None:
    client = default_gateway.client()
    try:
        parsed = client.beta.chat.completions.parse(model="mock-1", messages=_msg("a city"), response_format=City)
        city = parsed.choices[0].message.parsed
        assert isinstance(city, City)
        again = client.chat.completions.parse(model="mock-1", messages=_msg("a city"), response_format=City)
        assert again.choices[0].message.parsed == city  # deterministic
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]
        done = client.chat.completions.create(model="mock-1", messages=_msg("weather?"), tools=tools,  # type: ignore[arg-type]
                                              tool_choice="required")
        assert done.choices[0].finish_reason == "tool_calls"
        call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["input_schema"])  # type: ignore[union-attr]
        streamed = list(client.chat.completions.create(model="mock-1", messages=_msg("weather?"), tools=tools,  # type: ignore[arg-type]
                                                       tool_choice="required", stream=True))
        args = "".join(tc.function.arguments or "" for c in streamed if c.choices
                       for tc in c.choices[0].delta.tool_calls or () if tc.function)
        assert args == call.function.arguments  # type: ignore[union-attr]
    finally:
        client.close()


def test_anthropic_verifies_the_turns_sent_back(claude: anthropic.Anthropic) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    first_turn = _msg("weather !tool get_weather")
    first = claude.messages.create(model="m", max_tokens=2048, messages=first_turn, tools=[WEATHER],
                                   thinking=thinking)  # type: ignore[arg-type]
    think, use = first.content
    assert think.type == "thinking" and use.type == "tool_use"
    blocks = _dump(first.content)

    def follow(assistant: list[dict[str, Any]], tool_use_id: str = use.id) -> Message:
        turn = [*first_turn, {"role": "assistant", "content": assistant},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use_id, "content": "rain"}]}]
        return claude.messages.create(model="m", max_tokens=2048, messages=turn, tools=[WEATHER],  # type: ignore[arg-type]
                                      thinking=thinking)  # type: ignore[arg-type]

    assert "rain" in follow(blocks).content[-1].text  # type: ignore[union-attr]
    # a signature-only block (the text left out) still carries a valid signature
    follow([{**blocks[0], "thinking": ""}, blocks[1]])
    with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):
        follow([{**blocks[0], "thinking": blocks[0]["thinking"] + " edited"}, blocks[1]])
    with pytest.raises(anthropic.BadRequestError, match="Expected `thinking` or `redacted_thinking`"):
        follow([blocks[1]])
    with pytest.raises(anthropic.BadRequestError, match="unexpected `tool_use_id`"):
        follow(blocks, "toolu_other")
    with pytest.raises(anthropic.BadRequestError, match="should match pattern"):
        follow([blocks[0], {**blocks[1], "id": "functions.get_weather:0"}], "functions.get_weather:0")
