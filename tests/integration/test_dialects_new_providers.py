"""Every client dialect against the Gemini, Vertex AI, Bedrock and Cohere upstreams, through the seam.

The official ``anthropic`` SDK (``/v1/messages``: create, stream, tools) and the ``openai`` SDK's
``client.responses`` (``/v1/responses``: create, stream, tools) against one gateway whose models are
served by ``gateway mock --dialect gemini`` (AI Studio, and Vertex AI with Gemini and Claude models),
``gateway mock --dialect bedrock`` (SigV4 checked with the secret) and ``gateway mock --dialect cohere``
(bearer key checked): real processes on loopback. The SDKs parse every answer and stream event with
their own types, so an answer in the wrong shape fails here. Upstream errors come back in the client's
dialect; embeddings stay OpenAI's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, ServerProcess, free_port
from .test_bedrock_upstream import AWS_ENV, CLAUDE, KEY_ID, SECRET
from .test_cohere_upstream import CO_KEY
from .test_gemini_upstream import KEY as GEMINI_KEY
from .test_gemini_upstream import TokenEndpoint, service_account_file

pytestmark = pytest.mark.timeout(180)

#: the gateway's model names, one per upstream kind
MODELS = ["gemini", "vertex", "vertex-claude", "bedrock", "cohere"]
#: a model of each upstream whose provider answers every request with an error (the mock's ``x-mock``)
DOWN = {"gemini-down": 503, "bedrock-throttled": 429, "cohere-down": 503}
USER = "Tell me something about gateways."
WEATHER_MESSAGES: Any = {
    "name": "get_weather", "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
WEATHER_RESPONSES: Any = {
    "type": "function", "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _config(gem_port: int, bedrock_port: int, cohere_port: int, sa_file: Path) -> str:
    gem = f"http://{HOST}:{gem_port}"
    return f"""
[server]
drain_timeout = 2.0

[providers.gemini]
type = "gemini"
base_url = "{gem}/v1beta"
api_key = "env:GEMINI_KEY"
read_timeout = 10.0

[providers.gemini-down]
type = "gemini"
base_url = "{gem}/v1beta"
api_key = "env:GEMINI_KEY"
[providers.gemini-down.headers]
x-mock = "status=503"

[providers.vertex]
type = "vertex"
base_url = "{gem}/v1"
project = "test-project"
location = "europe-west4"
credentials_file = "{sa_file}"

[providers.aws]
type = "bedrock"
base_url = "http://{HOST}:{bedrock_port}"
read_timeout = 10.0

[providers.aws-throttled]
type = "bedrock"
base_url = "http://{HOST}:{bedrock_port}"
[providers.aws-throttled.headers]
x-mock = "status=429"

[providers.co]
type = "cohere"
base_url = "http://{HOST}:{cohere_port}"
api_key = "env:CO_KEY"
read_timeout = 10.0

[providers.co-down]
type = "cohere"
base_url = "http://{HOST}:{cohere_port}"
api_key = "env:CO_KEY"
[providers.co-down.headers]
x-mock = "status=503"

[models.gemini]
provider = "gemini"
upstream_model = "gemini-2.5-flash"

[models.gemini-down]
provider = "gemini-down"
upstream_model = "gemini-2.5-flash"

[models.gemini-embed]
provider = "gemini"
upstream_model = "gemini-embedding-001"
endpoints = ["embeddings"]

[models.vertex]
provider = "vertex"
upstream_model = "gemini-2.5-flash"

[models.vertex-claude]
provider = "vertex"
upstream_model = "claude-sonnet-4-5"

[models.bedrock]
provider = "aws"
upstream_model = "{CLAUDE}"

[models.bedrock-throttled]
provider = "aws-throttled"
upstream_model = "{CLAUDE}"

[models.bedrock-embed]
provider = "aws"
upstream_model = "cohere.embed-english-v3"
endpoints = ["embeddings"]

[models.cohere]
provider = "co"
upstream_model = "command-a-03-2025"

[models.cohere-down]
provider = "co-down"
upstream_model = "command-a-03-2025"

[models.cohere-embed]
provider = "co"
upstream_model = "embed-v4.0"
endpoints = ["embeddings"]
"""


def _mock(name: str, args: list[str], logs_dir: Path, request: pytest.FixtureRequest,
          env: dict[str, str] | None = None) -> Iterator[int]:
    port = free_port()
    proc = ServerProcess(name, ["mock", *args, "--port", str(port), "-q"], logs_dir, port, env=env).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        _stop(proc, request, failed)


@pytest.fixture(scope="module")
def gemini_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    yield from _mock("mock-gemini", ["--dialect", "gemini", "--api-key", GEMINI_KEY], logs_dir, request)


@pytest.fixture(scope="module")
def bedrock_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    yield from _mock("mock-bedrock", ["--dialect", "bedrock", "--api-key", KEY_ID], logs_dir, request,
                     env={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET})


@pytest.fixture(scope="module")
def cohere_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    yield from _mock("mock-cohere", ["--dialect", "cohere", "--api-key", CO_KEY], logs_dir, request)


@pytest.fixture(scope="module")
def gw(gemini_mock: int, bedrock_mock: int, cohere_mock: int, logs_dir: Path,
       request: pytest.FixtureRequest) -> Iterator[Gateway]:
    mp = pytest.MonkeyPatch()
    tok = TokenEndpoint()
    try:
        mp.setenv("GEMINI_KEY", GEMINI_KEY)
        mp.setenv("CO_KEY", CO_KEY)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        for k, v in AWS_ENV.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                  "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
            mp.delenv(k, raising=False)
        sa = service_account_file(logs_dir / "dialects-vertex-sa.json", f"http://{HOST}:{tok.port}/token")
        gateway = _launch("gateway-dialects-new", logs_dir,
                          config_text=_config(gemini_mock, bedrock_mock, cohere_mock, sa), workers=1,
                          frontend="native")
        failed = request.session.testsfailed
        try:
            yield gateway
        finally:
            _stop(gateway.process, request, failed)
    finally:
        tok.close()
        mp.undo()


@pytest.fixture
def claude(gw: Gateway) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=f"http://{HOST}:{gw.port}", api_key="k", max_retries=0, timeout=30)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def oai(gw: Gateway) -> Iterator[openai.OpenAI]:
    c = gw.client(timeout=30.0)
    try:
        yield c
    finally:
        c.close()


# -- Anthropic Messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_messages_create(claude: anthropic.Anthropic, model: str) -> None:
    msg = claude.messages.create(model=model, max_tokens=200, messages=[{"role": "user", "content": USER}])
    assert msg.type == "message" and msg.role == "assistant" and msg.model
    assert msg.stop_reason == "end_turn"
    text = "".join(b.text for b in msg.content if b.type == "text")
    assert len(text.split()) > 3
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_messages_stream(claude: anthropic.Anthropic, model: str) -> None:
    whole = claude.messages.create(model=model, max_tokens=200, messages=[{"role": "user", "content": USER}])
    with claude.messages.stream(model=model, max_tokens=200,
                                messages=[{"role": "user", "content": USER}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and "message_stop" in kinds and "content_block_delta" in kinds
    text = "".join(b.text for b in final.content if b.type == "text")
    assert text == "".join(b.text for b in whole.content if b.type == "text")
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_messages_tools(claude: anthropic.Anthropic, model: str) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = claude.messages.create(model=model, max_tokens=200, messages=messages, tools=[WEATHER_MESSAGES],
                                   tool_choice={"type": "any"})
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and call.id
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                               "content": "sunny, 21 C"}]}]
    second = claude.messages.create(model=model, max_tokens=200, messages=messages, tools=[WEATHER_MESSAGES])
    assert second.stop_reason == "end_turn"
    assert "".join(b.text for b in second.content if b.type == "text")

    with claude.messages.stream(model=model, max_tokens=200, messages=messages[:1], tools=[WEATHER_MESSAGES],
                                tool_choice={"type": "any"}) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [b.name for b in streamed.content if b.type == "tool_use"] == ["get_weather"]


@pytest.mark.parametrize(("model", "status"), list(DOWN.items()))
def test_messages_upstream_error_in_anthropic_shape(claude: anthropic.Anthropic, model: str, status: int) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": USER}])
    assert info.value.status_code == status
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] in ("rate_limit_error", "overloaded_error")
    assert body["error"]["message"]


# -- OpenAI Responses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_responses_create(oai: openai.OpenAI, model: str) -> None:
    resp = oai.responses.create(model=model, input=USER, store=False)
    assert resp.object == "response" and resp.status == "completed"
    assert len(resp.output_text.split()) > 3
    assert resp.usage is not None and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_responses_stream(oai: openai.OpenAI, model: str) -> None:
    whole = oai.responses.create(model=model, input=USER, store=False)
    deltas: list[str] = []
    completed: Any = None
    for event in oai.responses.create(model=model, input=USER, store=False, stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response
    assert completed is not None and completed.status == "completed"
    assert "".join(deltas) == whole.output_text == completed.output_text


@pytest.mark.parametrize("model", MODELS)
def test_responses_tools(oai: openai.OpenAI, model: str) -> None:
    first = oai.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER_RESPONSES],
                                 tool_choice="required", store=False)
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"] and calls[0].call_id
    second = oai.responses.create(
        model=model, tools=[WEATHER_RESPONSES], store=False,
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                "arguments": calls[0].arguments},
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}])
    assert second.status == "completed" and second.output_text


@pytest.mark.parametrize(("model", "status"), list(DOWN.items()))
def test_responses_upstream_error_in_openai_shape(oai: openai.OpenAI, model: str, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        oai.responses.create(model=model, input=USER, store=False)
    assert info.value.status_code == status
    body: Any = info.value.body
    assert body["message"] and body["type"]


# -- OpenAI chat and embeddings still served -----------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_chat_still_served(oai: openai.OpenAI, model: str) -> None:
    resp = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": USER}])
    assert resp.object == "chat.completion" and resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["gemini-embed", "bedrock-embed", "cohere-embed"])
def test_embeddings_still_served(oai: openai.OpenAI, model: str) -> None:
    resp = oai.embeddings.create(model=model, input=["a gateway", "an upstream"])
    assert [d.index for d in resp.data] == [0, 1] and all(d.embedding for d in resp.data)
    assert resp.usage.prompt_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_responses_stream_always_completes(gw: Gateway, model: str) -> None:
    """However the upstream's last pieces fall (its end alone in a piece gives the client no bytes), the
    Responses stream ends with ``response.completed``, never an "ended early" failure."""
    for _ in range(8):
        with httpx.stream("POST", f"http://{HOST}:{gw.port}/v1/responses", timeout=30,
                          json={"model": model, "input": USER, "stream": True, "store": False},
                          headers={"authorization": "Bearer k"}) as r:
            body = r.read()
        assert r.status_code == 200
        last = [e for e in body.split(b"\n\n") if e.startswith(b"event: ")][-1]
        assert last.startswith(b"event: response.completed\n"), body[-600:]


@pytest.mark.parametrize("model", ["bedrock", "gemini"])
def test_messages_thinking_round_trip(claude: anthropic.Anthropic, model: str) -> None:
    """Thinking blocks come back with their signatures, and go back up as they came (the mocks refuse a
    turn whose signature they did not give)."""
    user: Any = {"role": "user", "content": USER}
    first = claude.messages.create(model=model, max_tokens=2048, messages=[user],
                                   thinking={"type": "enabled", "budget_tokens": 1024})
    thinking = [b for b in first.content if b.type == "thinking"]
    # Gemini signs the part after its thought summary: the signature may come in a block of its own
    assert any(b.thinking for b in thinking) and any(b.signature for b in thinking)
    history: Any = [user, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                    {"role": "user", "content": "And more?"}]
    second = claude.messages.create(model=model, max_tokens=2048, messages=history,
                                    thinking={"type": "enabled", "budget_tokens": 1024})
    assert "".join(b.text for b in second.content if b.type == "text")


@pytest.mark.parametrize("model", MODELS)
def test_messages_count_tokens(claude: anthropic.Anthropic, model: str) -> None:
    counted = claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": USER}],
                                           tools=[WEATHER_MESSAGES])
    alone = claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": USER}])
    assert counted.input_tokens > alone.input_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_responses_previous_response_id(oai: openai.OpenAI, model: str) -> None:
    """The gateway keeps the conversation for a provider that has no such state."""
    first = oai.responses.create(model=model, input="My name is Ada.")
    second = oai.responses.create(model=model, input="What is my name?", previous_response_id=first.id)
    assert second.status == "completed" and second.output_text
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn went up again
    items = oai.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["message"]
    assert oai.responses.retrieve(second.id).output_text == second.output_text
