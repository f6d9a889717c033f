"""An OpenAI-dialect client, the official ``openai`` SDK, against a gateway whose upstream speaks Anthropic.

Real processes on loopback: ``gateway mock --dialect anthropic`` (and the plain OpenAI mock for the
fallback), a ``gateway serve`` in front of both, and a small Anthropic-shaped recorder in this process
for what the gateway puts on the wire (headers).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, RecordingUpstream, ServerProcess, call_records, free_port
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(90)

ANTH_KEY = "sk-ant-integration"
USER = [{"role": "user", "content": "Tell me something about gateways."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}
# a 1x1 PNG
PNG = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                  "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
).decode()


def _anthropic_answer(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    if json.loads(body).get("stream"):
        # what Anthropic does when overloaded after the head: 200, then an error event
        return 200, "text/event-stream", (b'event: error\ndata: {"type": "error", "error": '
                                          b'{"type": "overloaded_error", "message": "Overloaded"}}\n\n')
    return 200, "application/json", json.dumps({
        "id": "msg_rec", "type": "message", "role": "assistant", "model": "claude-rec",
        "content": [{"type": "text", "text": "recorded"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1},
    }).encode()


class Recorder(TinyUpstream):
    """An Anthropic-shaped upstream that keeps the headers of every request it gets."""

    def __init__(self) -> None:
        super().__init__(_anthropic_answer)

    @property
    def headers(self) -> list[dict[str, str]]:
        return [headers for _, headers, _ in self.seen]


def _config(anth_port: int, mock_port: int, rec_port: int, oai_rec_port: int) -> str:
    anth = f"http://{HOST}:{anth_port}/v1"
    return f"""
[server]
drain_timeout = 2.0
[log]
level = "info"
call_records = true

[providers.claude]
type = "anthropic"
base_url = "{anth}"
api_key = "env:ANTH_KEY"
read_timeout = 10.0

[providers.claude-down]
type = "anthropic"
base_url = "{anth}"
api_key = "env:ANTH_KEY"
[providers.claude-down.headers]
x-mock = "status=529"

[providers.claude-recorded]
type = "anthropic"
base_url = "http://{HOST}:{rec_port}/v1"
api_key = "env:ANTH_KEY"
beta = ["prompt-caching-2024-07-31"]

[providers.claude-custom]
type = "anthropic"
base_url = "http://{HOST}:{rec_port}/v1"
api_key = "env:ANTH_KEY"
forward_headers = ["X-Trace-Tag"]

[providers.openai-recorded]
type = "openai"
base_url = "http://{HOST}:{oai_rec_port}/v1"

[providers.openai]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:MOCK_KEY"

[models.claude]
provider = "claude"
upstream_model = "claude-mock"

[models.claude-recorded]
provider = "claude-recorded"

[models.claude-custom]
provider = "claude-custom"

[models.openai-recorded]
provider = "openai-recorded"

[models.claude-down]
provider = "claude-down"
upstream_model = "claude-mock"
fallbacks = ["openai-backup"]

[models.claude-retried]
deployments = [
  {{ provider = "claude-down", upstream_model = "claude-mock", cost = 1.0 }},
  {{ provider = "claude", upstream_model = "claude-mock", cost = 2.0 }},
]
strategy = "cost"
retry = {{ max_attempts = 2, base_backoff = 0.0 }}

[models.mixed]
strategy = "cost"
deployments = [
  {{ provider = "claude-down", upstream_model = "claude-mock", cost = 1.0 }},
  {{ provider = "openai", upstream_model = "mock-1", cost = 10.0 }},
]

[models.mixed-sse-error]
strategy = "cost"
deployments = [
  {{ provider = "claude-recorded", upstream_model = "claude-rec", cost = 1.0 }},
  {{ provider = "openai", upstream_model = "mock-1", cost = 10.0 }},
]

[models.openai-backup]
provider = "openai"
upstream_model = "mock-1"
"""


@pytest.fixture(scope="module")
def anthropic_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    proc = ServerProcess("mock-anthropic", ["mock", "--dialect", "anthropic", "--api-key", ANTH_KEY,
                                            "--port", str(port), "-q"], logs_dir, port).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        _stop(proc, request, failed)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture(scope="module")
def openai_recorder() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as rec:
        yield rec


@pytest.fixture(scope="module")
def gw(anthropic_mock: int, mock_port: int, recorder: Recorder, openai_recorder: RecordingUpstream,
       logs_dir: Path, request: pytest.FixtureRequest, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch_module.setenv("ANTH_KEY", ANTH_KEY)
    config = _config(anthropic_mock, mock_port, recorder.port, openai_recorder.port)
    gateway = _launch("gateway-anthropic", logs_dir, config_text=config, workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gateway
    finally:
        _stop(gateway.process, request, failed)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    try:
        yield mp
    finally:
        mp.undo()


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    c = gw.client()
    try:
        yield c
    finally:
        c.close()


def _records(gw: Gateway, request_id: str) -> dict[str, Any]:
    found = call_records(gw.process, lambda rs: any(r.get("request_id") == request_id for r in rs),
                         what=f"the call record of {request_id}")
    return next(r for r in found if r.get("request_id") == request_id)


# -- chat and streams -----------------------------------------------------------------------------------


def test_chat(client: openai.OpenAI, gw: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=USER)
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.model == "claude-mock"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content and len(resp.choices[0].message.content.split()) == 12
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12
    # Anthropic's rate-limit headers, in OpenAI's names
    assert raw.headers.get("x-ratelimit-limit-requests") == "4000"
    assert raw.headers.get("x-ratelimit-remaining-requests") == "3999"
    assert raw.headers.get("x-ratelimit-reset-requests", "").endswith("s")
    assert not any(k.startswith("anthropic-ratelimit") for k in raw.headers)
    record = _records(gw, raw.headers["x-request-id"])
    assert record["provider"] == "claude"
    assert record["upstream_model"] == "claude-mock"
    assert record["status"] == 200
    assert record["completion_tokens"] == 12
    assert record["prompt_tokens"] == resp.usage.prompt_tokens


def test_max_tokens_is_length(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="claude", messages=USER, max_tokens=5)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_stream_with_usage(client: openai.OpenAI, gw: Gateway) -> None:
    full = client.chat.completions.create(model="claude", messages=USER)
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=USER, stream=True, stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert raw.headers.get("content-type", "").startswith("text/event-stream")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 12
    assert full.usage is not None and last.usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    record = _records(gw, raw.headers["x-request-id"])
    assert record["stream"] is True and record["completion_tokens"] == 12


def test_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="claude", messages=USER, stream=True))
    assert chunks and all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


# -- tools ----------------------------------------------------------------------------------------------


def test_tool_call(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="claude", messages=USER, tools=[WEATHER],  # type: ignore[list-item]
                                          tool_choice="required")
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)


def test_parallel_tool_calls_stream_keep_their_index(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "!tool get_weather get_time please"}]
    stream = client.chat.completions.create(model="claude", messages=messages,  # type: ignore[arg-type]
                                            tools=[WEATHER, TIME], stream=True)  # type: ignore[list-item]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or ():
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            if tc.id:
                entry["id"] = tc.id
            if tc.function and tc.function.name:
                entry["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                entry["arguments"] += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "get_weather" and calls[1]["name"] == "get_time"
    assert "city" in json.loads(calls[0]["arguments"])
    assert "zone" in json.loads(calls[1]["arguments"])
    assert calls[0]["id"] != calls[1]["id"]


def test_tool_round_trip_with_thinking(client: openai.OpenAI) -> None:
    """Thinking signatures and tool-use ids go back unchanged: the mock refuses the turn otherwise."""
    first = client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "!tool get_weather in Paris"}],
        tools=[WEATHER], reasoning_effort="low",  # type: ignore[list-item]
    )
    msg = first.choices[0].message
    assert msg.tool_calls and first.choices[0].finish_reason == "tool_calls"
    extra = msg.model_extra or {}
    blocks = extra.get("thinking_blocks")
    assert blocks and blocks[0]["type"] == "thinking" and blocks[0]["signature"]
    call = msg.tool_calls[0]
    assistant: dict[str, Any] = {
        "role": "assistant", "content": msg.content,
        "tool_calls": [{"id": call.id, "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments}}],
        "thinking_blocks": blocks,
    }
    second = client.chat.completions.create(
        model="claude", tools=[WEATHER], reasoning_effort="low",  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "!tool get_weather in Paris"},
            assistant,
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
        ],  # type: ignore[list-item]
    )
    text = second.choices[0].message.content or ""
    assert "sunny, 21C" in text
    # a tampered signature is refused by the upstream: a 400 in the client's dialect
    bad = {**assistant, "thinking_blocks": [{**blocks[0], "signature": "AAAA" + blocks[0]["signature"][4:]}]}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="claude", tools=[WEATHER], reasoning_effort="low",  # type: ignore[list-item]
            messages=[{"role": "user", "content": "!tool get_weather in Paris"}, bad,
                      {"role": "tool", "tool_call_id": call.id, "content": "sunny"}],  # type: ignore[list-item]
        )


# -- images and structured output -----------------------------------------------------------------------


@pytest.mark.parametrize("url", [f"data:image/png;base64,{PNG}", "https://example.com/cat.png"])
def test_images(client: openai.OpenAI, url: str) -> None:
    resp = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}])  # type: ignore[list-item]
    assert resp.choices[0].message.content


def test_image_url_of_another_scheme_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])  # type: ignore[list-item]


class City(pydantic.BaseModel):
    name: str
    population: int
    landmarks: list[str]


def test_json_schema_parse(client: openai.OpenAI) -> None:
    resp = client.beta.chat.completions.parse(model="claude", messages=USER, response_format=City)
    city = resp.choices[0].message.parsed
    assert isinstance(city, City)


def test_usage_with_cached_tokens(client: openai.OpenAI, gw: Gateway) -> None:
    system = {"role": "system", "content": [{"type": "text", "text": "You are terse. " * 40,
                                             "cache_control": {"type": "ephemeral"}}]}
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=[system, {"role": "user", "content": "!cache read hello"}])  # type: ignore[list-item]
    resp = raw.parse()
    assert resp.usage is not None
    details = resp.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens and details.cached_tokens > 0
    # prompt_tokens counts the cached tokens once, with the rest
    assert resp.usage.prompt_tokens > details.cached_tokens
    record = _records(gw, raw.headers["x-request-id"])
    assert record["prompt_tokens"] == resp.usage.prompt_tokens


# -- errors ---------------------------------------------------------------------------------------------


def _mock(directives: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"!mock {directives} and then some text"}]


def test_error_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude", messages=_mock("status=400"))
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body.get("type") == "invalid_request_error"


def test_error_401_is_the_gateways_upstream_setup(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="claude", messages=_mock("status=401"))
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_authentication"


def test_error_429_keeps_retry_headers(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="claude", messages=_mock("status=429 retry_after=3"))
    headers = info.value.response.headers
    assert headers.get("retry-after") == "3"
    assert headers.get("x-ratelimit-remaining-requests") == "0"


def test_error_500(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="claude", messages=_mock("status=500"))
    assert info.value.status_code == 502


def test_error_529_is_overloaded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="claude", messages=_mock("status=529"))
    assert info.value.status_code == 503
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_overloaded"


def test_embeddings_and_completions_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="claude", prompt="hello")
    assert "Anthropic" in str(info.value)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="claude", input="hello")


def test_mid_stream_cut_ends_with_an_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="claude", messages=_mock("cut=3"), stream=True))


# -- routing --------------------------------------------------------------------------------------------


def test_529_is_retried_on_another_deployment(client: openai.OpenAI, gw: Gateway) -> None:
    """The cheaper deployment answers 529 (overloaded): the request is retried on the other one."""
    raw = client.chat.completions.with_raw_response.create(model="claude-retried", messages=USER)
    assert raw.parse().choices[0].message.content
    record = _records(gw, raw.headers["x-request-id"])
    assert record["status"] == 200 and record["provider"] == "claude"
    assert record["attempts"] == 2 and record["upstream_status"] == 200


def test_failover_anthropic_to_openai(client: openai.OpenAI, gw: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(model="claude-down", messages=USER)
    resp = raw.parse()
    assert resp.model == "mock-1"
    assert raw.headers.get("x-gateway-model") == "openai-backup"
    record = _records(gw, raw.headers["x-request-id"])
    assert record["provider"] == "openai" and record["attempts"] == 2
    assert record["prompt_tokens"] == resp.usage.prompt_tokens  # type: ignore[union-attr]


def test_failover_anthropic_to_openai_stream(client: openai.OpenAI, gw: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-down", messages=USER, stream=True, stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert chunks[0].model == "mock-1"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    record = _records(gw, raw.headers["x-request-id"])
    assert record["provider"] == "openai" and record["attempts"] == 2 and record["stream"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_deployments_on_two_providers_fail_over(client: openai.OpenAI, gw: Gateway, stream: bool) -> None:
    """One routed model, Anthropic first (529), OpenAI second: the client sees OpenAI's dialect either way."""
    raw = client.chat.completions.with_raw_response.create(model="mixed", messages=USER, stream=stream)
    if stream:
        chunks = list(raw.parse())  # type: ignore[call-overload]
        assert chunks[0].model == "mock-1" and chunks[-1].choices[0].finish_reason == "stop"
    else:
        assert raw.parse().model == "mock-1"  # type: ignore[union-attr]
    assert raw.headers.get("x-gateway-deployment") == "openai/mock-1"
    record = _records(gw, raw.headers["x-request-id"])
    assert record["provider"] == "openai" and record["attempts"] == 2


def test_stream_error_event_before_content_fails_over(client: openai.OpenAI, gw: Gateway) -> None:
    """Anthropic answers 200 and then an overloaded_error event: nothing was sent, so OpenAI answers."""
    raw = client.chat.completions.with_raw_response.create(model="mixed-sse-error", messages=USER, stream=True)
    chunks = list(raw.parse())
    assert chunks[0].model == "mock-1"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    record = _records(gw, raw.headers["x-request-id"])
    assert record["provider"] == "openai" and record["attempts"] == 2


def test_stream_error_event_on_a_direct_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError) as info:
        list(client.chat.completions.create(model="claude-recorded", messages=USER, stream=True))
    assert "Overloaded" in str(info.value)


# -- headers on the wire --------------------------------------------------------------------------------


def test_credentials_version_and_beta_sent(client: openai.OpenAI, recorder: Recorder) -> None:
    before = len(recorder.headers)
    resp = client.chat.completions.create(model="claude-recorded", messages=USER)
    assert resp.choices[0].message.content == "recorded"
    seen = recorder.headers[before]
    assert seen["x-api-key"] == ANTH_KEY
    assert seen["anthropic-version"] == "2023-06-01"
    assert seen["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert "authorization" not in seen




def test_client_anthropic_headers_forwarded(client: openai.OpenAI, recorder: Recorder) -> None:
    """A client's anthropic-beta joins the configured betas; its anthropic-version replaces the
    configured one; headers outside the allow-list stay behind."""
    before = len(recorder.headers)
    client.chat.completions.create(model="claude-recorded", messages=USER, extra_headers={
        "anthropic-beta": "extra-beta-1, prompt-caching-2024-07-31",
        "anthropic-version": "2026-10-21",
        "x-secret-thing": "no",
    })
    seen = recorder.headers[before]
    assert seen["anthropic-beta"] == "prompt-caching-2024-07-31,extra-beta-1"
    assert seen["anthropic-version"] == "2026-10-21"
    assert "x-secret-thing" not in seen
    assert seen["x-api-key"] == ANTH_KEY


def test_the_anthropic_version_really_reaches_anthropic(client: openai.OpenAI) -> None:
    # the mock refuses versions it does not know: the client's header went up
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude", messages=USER,
                                       extra_headers={"anthropic-version": "1999-01-01"})
    assert "anthropic-version" in str(info.value)


def test_configured_forward_headers_replace_the_defaults(client: openai.OpenAI, recorder: Recorder) -> None:
    before = len(recorder.headers)
    client.chat.completions.create(model="claude-custom", messages=USER, extra_headers={
        "x-trace-tag": "abc", "anthropic-beta": "not-passed"})
    seen = recorder.headers[before]
    assert seen["x-trace-tag"] == "abc"
    assert "anthropic-beta" not in seen
    assert seen["anthropic-version"] == "2023-06-01"


def test_openai_headers_forwarded(client: openai.OpenAI, openai_recorder: RecordingUpstream) -> None:
    before = len(openai_recorder.requests)
    client.chat.completions.create(model="openai-recorded", messages=USER, extra_headers={
        "OpenAI-Beta": "assistants=v2", "OpenAI-Organization": "org-1", "OpenAI-Project": "proj-1",
        "anthropic-beta": "nope"})
    seen = openai_recorder.requests[before].headers
    assert seen["openai-beta"] == "assistants=v2"
    assert seen["openai-organization"] == "org-1"
    assert seen["openai-project"] == "proj-1"
    assert "anthropic-beta" not in seen
