"""An OpenAI-dialect client, the official ``openai`` SDK, against a gateway whose upstream is Cohere (API v2).

Real processes on loopback: ``gateway mock --dialect cohere`` (checking its bearer key), the plain OpenAI
mock for the fallback, and a ``gateway serve`` in front of both. The mock itself is checked with the
``cohere`` SDK's own client, which parses every answer and stream event with its pydantic types.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import openai
import pydantic
import pytest

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)

CO_KEY = "co-integration-key"
USER = [{"role": "user", "content": "Tell me something about gateways."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                       "required": ["zone"]}}}


def _config(cohere_port: int, mock_port: int) -> str:
    base = f"http://{HOST}:{cohere_port}"
    return f"""
[server]
drain_timeout = 2.0

[providers.co]
type = "cohere"
base_url = "{base}"
api_key = "env:CO_KEY"
read_timeout = 10.0

[providers.co-down]
type = "cohere"
base_url = "{base}"
api_key = "env:CO_KEY"
[providers.co-down.headers]
x-mock = "status=503"

[providers.co-wrong-key]
type = "cohere"
base_url = "{base}"
api_key = "env:WRONG_KEY"

[providers.openai]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:MOCK_KEY"

[models.command]
provider = "co"
upstream_model = "command-a-03-2025"

[models.embed]
provider = "co"
upstream_model = "embed-v4.0"
endpoints = ["embeddings"]

[models.wrong-key]
provider = "co-wrong-key"
upstream_model = "command-a-03-2025"

[models.routed]
strategy = "cost"
deployments = [
  {{ provider = "co-down", upstream_model = "command-a-03-2025", cost = 1.0 }},
  {{ provider = "openai", upstream_model = "mock-1", cost = 10.0 }},
]
"""


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    try:
        yield mp
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def cohere_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    proc = ServerProcess("mock-cohere", ["mock", "--dialect", "cohere", "--api-key", CO_KEY, "--port", str(port),
                                         "-q"], logs_dir, port).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        _stop(proc, request, failed)


@pytest.fixture(scope="module")
def gw(cohere_mock: int, mock_port: int, logs_dir: Path, request: pytest.FixtureRequest,
       monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch_module.setenv("CO_KEY", CO_KEY)
    monkeypatch_module.setenv("WRONG_KEY", "co-wrong")
    gateway = _launch("gateway-cohere", logs_dir, config_text=_config(cohere_mock, mock_port), workers=1,
                      frontend="native")
    failed = request.session.testsfailed
    try:
        yield gateway
    finally:
        _stop(gateway.process, request, failed)


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    c = gw.client()
    try:
        yield c
    finally:
        c.close()


# -- the mock, through the cohere SDK ------------------------------------------------------------------


@pytest.fixture(scope="module")
def co(cohere_mock: int) -> Iterator[Any]:
    with cohere.ClientV2(api_key=CO_KEY, base_url=f"http://{HOST}:{cohere_mock}") as client:
        yield client


def test_cohere_sdk_chat_against_the_mock(co: Any) -> None:
    resp = co.chat(model="command-a-03-2025", messages=[{"role": "user", "content": "hi !tool"}],
                   tools=[WEATHER], tool_choice="REQUIRED")
    assert resp.finish_reason == "TOOL_CALL" and resp.message.tool_plan
    assert resp.message.tool_calls[0].function.name == "get_weather"
    assert resp.usage.billed_units.input_tokens >= 1


def test_cohere_sdk_stream_against_the_mock(co: Any) -> None:
    kinds = [ev.type for ev in co.chat_stream(model="command-a-03-2025",
                                              messages=[{"role": "user", "content": "hello"}])]
    assert kinds[0] == "message-start" and kinds[-1] == "message-end" and "content-delta" in kinds


def test_cohere_sdk_embed_against_the_mock(co: Any) -> None:
    resp = co.embed(model="embed-v4.0", texts=["a", "b"], input_type="search_document", embedding_types=["float"])
    assert len(resp.embeddings.float_) == 2


# -- through the gateway -----------------------------------------------------------------------------------


def test_chat(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="command", messages=USER)  # type: ignore[arg-type]
    assert resp.model == "command" and resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content and resp.usage is not None and resp.usage.completion_tokens == 12


def test_stream_with_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="command", messages=USER)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model="command", messages=USER, stream=True,  # type: ignore[arg-type]
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].usage is not None and full.usage is not None
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_max_tokens_is_length(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="command", messages=USER, max_tokens=3)  # type: ignore[arg-type]
    assert resp.choices[0].finish_reason == "length"


def test_tool_round_trip_and_plan(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather?"}]
    first = client.chat.completions.create(model="command", messages=messages, tools=[WEATHER],  # type: ignore[list-item]
                                           tool_choice="required")
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and msg.tool_calls
    assert (msg.model_extra or {}).get("reasoning_content", "").startswith("I will call")
    call = msg.tool_calls[0]
    messages += [{"role": "assistant", "tool_calls": [call.model_dump()]},
                 {"role": "tool", "tool_call_id": call.id, "content": "rain"}]
    second = client.chat.completions.create(model="command", messages=messages, tools=[WEATHER])  # type: ignore[list-item]
    assert "rain" in (second.choices[0].message.content or "")


def test_parallel_tool_calls_stream_keep_their_index(client: openai.OpenAI) -> None:
    calls: dict[int, str] = {}
    args: dict[int, str] = {}
    for chunk in client.chat.completions.create(
            model="command", messages=[{"role": "user", "content": "!tool get_weather get_time"}],
            tools=[WEATHER, TIME], stream=True):  # type: ignore[list-item]
        for tc in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
            if tc.function and tc.function.name:
                calls[tc.index] = tc.function.name
            args[tc.index] = args.get(tc.index, "") + ((tc.function.arguments if tc.function else "") or "")
    assert calls == {0: "get_weather", 1: "get_time"}
    assert "city" in json.loads(args[0]) and "zone" in json.loads(args[1])


def test_tool_choice_none_stays_none(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="command", messages=[{"role": "user", "content": "!tool x"}],
                                          tools=[WEATHER], tool_choice="none")  # type: ignore[list-item]
    assert not resp.choices[0].message.tool_calls


class Answer(pydantic.BaseModel):
    title: str
    score: int


def test_json_schema_parse(client: openai.OpenAI) -> None:
    resp = client.chat.completions.parse(model="command", messages=USER, response_format=Answer)  # type: ignore[arg-type]
    assert isinstance(resp.choices[0].message.parsed, Answer)


def test_embeddings(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model="embed", input=["hello", "world"])  # base64 by the SDK's default
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 16 and resp.usage.prompt_tokens >= 2


@pytest.mark.parametrize("status, code", [(400, 400), (429, 429), (503, 503), (500, 502)])
def test_error_statuses(client: openai.OpenAI, status: int, code: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.with_options(max_retries=0).chat.completions.create(
            model="command", messages=[{"role": "user", "content": f"!mock status={status}"}])
    assert info.value.status_code == code


def test_a_wrong_key_is_the_operators_failure(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.with_options(max_retries=0).chat.completions.create(model="wrong-key", messages=USER)  # type: ignore[arg-type]
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_authentication"  # type: ignore[index]


def test_unavailable_primary_fails_over(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="routed", messages=USER, stream=True)  # type: ignore[arg-type]
    assert raw.headers["x-gateway-deployment"] == "openai/mock-1"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
