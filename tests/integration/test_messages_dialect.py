"""Anthropic Messages clients (``/v1/messages``): the official ``anthropic`` SDK against real processes.

One ``gateway serve`` (keys required, a rate limit on one model) in front of: the embedded mock
(translated: OpenAI chat wire), ``gateway mock --dialect anthropic`` (pass-through), ``gateway mock``
and ``gateway mock --dialect azure`` (OpenAI-dialect upstreams: translated), an Anthropic-shaped recorder in this process (pass-through,
for the exact bytes), and the gateway with no config at all (the embedded default).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from gateway.auth import digest, format_key

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, call_records, free_port
from .test_anthropic_upstream import (
    ANTH_KEY,
    PNG,
    Recorder,
    anthropic_mock,  # noqa: F401  # its fixture, shared
)
from .test_azure_upstream import _azure_provider, azure_mock  # noqa: F401  # its fixture, shared
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(120)

KEY = format_key("msgskeyaaaaa", "M" * 43)
CHAT_ONLY_KEY = format_key("chatonlyaaaa", "C" * 43)
MESSAGES_ONLY_KEY = format_key("msgsonlyaaaa", "O" * 43)
USER = [{"role": "user", "content": "Tell me something about gateways."}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
#: the event sequence of a one-text-block answer, as Anthropic streams it


# -- the recorder: an Anthropic upstream that keeps the exact bytes it gets and answers fixed bytes ------

RECORDED_MESSAGE = json.dumps({
    "id": "msg_rec", "type": "message", "role": "assistant", "model": "recorded",
    "content": [{"type": "text", "text": "recorded"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 7, "output_tokens": 1, "cache_creation_input_tokens": 5,
              "cache_read_input_tokens": 11},
}).encode()
RECORDED_STREAM = b"".join(
    b"event: " + kind.encode() + b"\ndata: " + json.dumps({"type": kind, **data}).encode() + b"\n\n"
    for kind, data in [
        ("message_start", {"message": {"id": "msg_rec", "type": "message", "role": "assistant",
                                       "model": "recorded", "content": [], "stop_reason": None,
                                       "stop_sequence": None,
                                       "usage": {"input_tokens": 7, "output_tokens": 1,
                                                 "cache_read_input_tokens": 11}}}),
        ("ping", {}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "recorded"}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 3}}),
        ("message_stop", {}),
    ]
)


#: what the recorder answers when a request's body holds the mark: what a proxy or a broken upstream in
#: front of Anthropic may send instead of Anthropic's answers
HOSTILE: dict[str, tuple[int, str, bytes]] = {
    "MODE-HTML502": (502, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "MODE-TEXT503": (503, "text/plain", b"upstream connect error or disconnect/reset before headers"),
    "MODE-OPENAI500": (500, "application/json", b'{"error": {"message": "boom", "type": "server_error"}}'),
    "MODE-WRONG200": (200, "application/json", b'{"foo": 1}'),
}


def _recorded_answer(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    for mark, answer in HOSTILE.items():
        if mark.encode() in body:
            return answer
    if json.loads(body).get("stream"):
        return 200, "text/event-stream", RECORDED_STREAM
    return 200, "application/json", RECORDED_MESSAGE


def _config(anth_port: int, mock_port: int, rec_port: int, sse_error_port: int, azure_port: int) -> str:
    anth = f"http://{HOST}:{anth_port}/v1"
    azure = _azure_provider("azure", azure_port, api_key="env:MOCK_KEY")
    return azure + f"""
[server]
drain_timeout = 2.0
[log]
level = "info"
call_records = true

[auth]
required = true
[[auth.keys]]
id = "msgskeyaaaaa"
digest = "{digest("M" * 43, b'')}"
tenant = "team"
[[auth.keys]]
id = "chatonlyaaaa"
digest = "{digest("C" * 43, b'')}"
tenant = "team"
endpoints = ["chat"]
[[auth.keys]]
id = "msgsonlyaaaa"
digest = "{digest("O" * 43, b'')}"
tenant = "team"
endpoints = ["messages"]
[tenants.team]
name = "Team"

[limits]
apply = {{ models = {{ "limited" = "one-per-second" }} }}
[limits.policies.one-per-second]
requests_per_second = 1

[pricing."recorded"]
input = 1.0
output = 2.0
cached_input = 0.5

[providers.embedded]
type = "mock"

[providers.claude]
type = "anthropic"
base_url = "{anth}"
api_key = "env:ANTH_KEY"
read_timeout = 10.0

[providers.claude-busy]
type = "anthropic"
base_url = "{anth}"
api_key = "env:ANTH_KEY"
[providers.claude-busy.headers]
x-mock = "status=529"

[providers.recorded]
type = "anthropic"
base_url = "http://{HOST}:{rec_port}/v1"
api_key = "env:ANTH_KEY"

[providers.openai]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:MOCK_KEY"

[models.mock-chat]
provider = "embedded"
upstream_model = "mock-1"

[models.limited]
provider = "embedded"
upstream_model = "mock-1"

[models.claude]
provider = "claude"
upstream_model = "claude-mock"

[models.claude-busy]
provider = "claude-busy"
upstream_model = "claude-mock"

[models.recorded]
provider = "recorded"

[providers.sse-error]
type = "anthropic"
base_url = "http://{HOST}:{sse_error_port}/v1"
api_key = "env:ANTH_KEY"

[models.sse-error-or-gpt]
strategy = "cost"
deployments = [
  {{ provider = "sse-error", upstream_model = "claude-rec", cost = 1.0 }},
  {{ provider = "openai", upstream_model = "mock-1", cost = 10.0 }},
]

[providers.dead]
type = "openai"
base_url = "http://{HOST}:{free_port()}/v1"
connect_timeout = 1.0

[models.all-down]
deployments = [{{ provider = "dead", upstream_model = "mock-1" }}]
retry = {{ max_attempts = 1 }}

[models.claude-or-gpt]
provider = "claude-busy"
upstream_model = "claude-mock"
fallbacks = ["gpt"]

[models.gpt]
provider = "openai"
upstream_model = "mock-1"

[models.azure-gpt]
provider = "azure"
upstream_model = "gpt4o-prod"

[models.embed-only]
provider = "embedded"
upstream_model = "mock-embed-1"
endpoints = ["embeddings"]
"""


@pytest.fixture(scope="module")
def recorder() -> Iterator[TinyUpstream]:
    rec = TinyUpstream(_recorded_answer)
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture(scope="module")
def sse_error() -> Iterator[Recorder]:
    """An Anthropic upstream whose streams are only an ``overloaded_error`` event (200, then the error)."""
    rec = Recorder()
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture(scope="module")
def anth_key_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANTH_KEY", ANTH_KEY)
        yield


@pytest.fixture(scope="module")
def gw(mock_port: int, recorder: TinyUpstream, sse_error: Recorder, logs_dir: Path,
       request: pytest.FixtureRequest, anth_key_env: None) -> Iterator[Gateway]:
    config = _config(request.getfixturevalue("anthropic_mock"), mock_port, recorder.port, sse_error.port,
                     request.getfixturevalue("azure_mock"))
    gateway = _launch("gateway-messages", logs_dir, config_text=config, workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gateway
    finally:
        _stop(gateway.process, request, failed)


@pytest.fixture(scope="module")
def default_gw(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """``gateway serve`` with no config: the embedded default, no keys."""
    gateway = _launch("gateway-messages-default", logs_dir, config_text=None, workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gateway
    finally:
        _stop(gateway.process, request, failed)


Sdk = Callable[..., anthropic.Anthropic]


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    """Makes ``anthropic`` clients for a gateway (a key, no retries unless asked); closed after the test."""
    made: list[anthropic.Anthropic] = []

    def make(gw: Gateway, key: str = KEY, retries: int = 0) -> anthropic.Anthropic:
        c = anthropic.Anthropic(base_url=f"http://{HOST}:{gw.port}", api_key=key, max_retries=retries,
                                timeout=30.0)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def raw(gw: Gateway, body: dict[str, Any] | bytes, path: str = "/v1/messages", key: str | None = KEY,
        **headers: str) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", "anthropic-version": "2023-06-01", **headers}
    if key is not None:
        hdrs["x-api-key"] = key
    return httpx.post(f"http://{HOST}:{gw.port}{path}", content=data, headers=hdrs, timeout=30.0)


def event_names(body: bytes) -> list[str]:
    return [line[len(b"event: "):].decode() for line in body.split(b"\n") if line.startswith(b"event: ")]


# -- create and stream, every upstream kind ----------------------------------------------------------


@pytest.mark.parametrize("model", ["mock-chat", "claude", "gpt", "azure-gpt"])
def test_create_and_stream_with_the_sdk(sdk: Sdk, gw: Gateway, model: str) -> None:
    """Non-stream and stream through the SDK: a ``message`` with usage, and a stream the SDK accumulates
    into the same kind of message; the translated (mock-chat, gpt) and pass-through (claude) paths."""
    c = sdk(gw)
    msg = c.messages.create(model=model, max_tokens=64, messages=USER,
                            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                            metadata={"user_id": "user-1"}, stop_sequences=["\n\n\n"])
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    with c.messages.stream(model=model, max_tokens=64, messages=USER, system="Be brief.") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "text" in kinds and "message_delta" in kinds
    assert final.content[0].type == "text" and final.content[0].text
    assert final.usage.output_tokens > 0
    records = call_records(gw.process, lambda rs: sum(r.get("model") == model and r["path"] == "/v1/messages"
                                                      for r in rs) >= 2)
    mine = [r for r in records if r.get("model") == model and r["path"] == "/v1/messages"]
    assert all(r["status"] == 200 and r["completion_tokens"] > 0 and r["prompt_tokens"] > 0 for r in mine)


@pytest.mark.parametrize("model", ["mock-chat", "gpt", "azure-gpt"])
def test_translated_stream_has_the_exact_event_sequence(gw: Gateway, model: str) -> None:
    resp = raw(gw, {"model": model, "max_tokens": 16, "stream": True, "messages": USER})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    names = event_names(resp.content)
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    last_delta = [json.loads(line[6:]) for line in resp.content.split(b"\n") if line.startswith(b"data: ")][-2]
    assert last_delta["type"] == "message_delta"
    assert last_delta["usage"]["output_tokens"] > 0 and last_delta["usage"]["input_tokens"] > 0
    assert resp.headers["request-id"] == resp.headers["x-request-id"]


# -- tools -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mock-chat", "claude", "gpt", "azure-gpt"])
def test_tools_round_trip(sdk: Sdk, gw: Gateway, model: str) -> None:
    """``tool_choice: any`` gets a ``tool_use`` block; its ``tool_result`` goes back and the model answers."""
    c = sdk(gw)
    first = c.messages.create(model=model, max_tokens=128, messages=USER, tools=[WEATHER],
                              tool_choice={"type": "any"})
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input, dict) and use.id
    second = c.messages.create(model=model, max_tokens=128, tools=[WEATHER], messages=[
        *USER,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}]},
    ])
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert any(b.type == "text" and b.text for b in second.content)


@pytest.mark.parametrize("model", ["mock-chat", "claude"])
def test_streamed_tool_call_accumulates(sdk: Sdk, gw: Gateway, model: str) -> None:
    c = sdk(gw)
    with c.messages.stream(model=model, max_tokens=128, messages=USER, tools=[WEATHER],
                           tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "get_weather" and "city" in use.input
    assert final.stop_reason == "tool_use"


# -- images ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mock-chat", "claude", "gpt"])
def test_images_base64_and_url(sdk: Sdk, gw: Gateway, model: str) -> None:
    msg = sdk(gw).messages.create(model=model, max_tokens=32, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "What is in these images?"},
    ]}])
    assert msg.content[0].type == "text" and msg.usage.input_tokens > 0
    bad = {"type": "image", "source": {"type": "url", "url": "file:///etc/passwd"}}
    if model != "claude":  # translated: the gateway checks it (an Anthropic upstream judges its own)
        with pytest.raises(anthropic.BadRequestError):
            sdk(gw).messages.create(model=model, max_tokens=32, messages=[{"role": "user", "content": [bad]}])


# -- thinking ----------------------------------------------------------------------------------------


def test_thinking_and_its_signature_survive_a_round_trip(sdk: Sdk, gw: Gateway) -> None:
    """Pass-through: the thinking block's signature (which the Anthropic mock verifies on the next turn)
    comes back byte for byte; streamed, it arrives as thinking_delta and signature_delta."""
    c = sdk(gw)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    first = c.messages.create(model="claude", max_tokens=2048, thinking=thinking, messages=USER)
    block = first.content[0]
    assert block.type == "thinking" and block.thinking and block.signature
    second = c.messages.create(model="claude", max_tokens=2048, thinking=thinking, messages=[
        *USER,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": "And more?"},
    ])
    assert second.content[0].type == "thinking"
    with c.messages.stream(model="claude", max_tokens=2048, thinking=thinking, messages=USER) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds
    assert final.content[0].type == "thinking" and final.content[0].signature == block.signature


def test_thinking_request_is_accepted_by_a_translated_upstream(sdk: Sdk, gw: Gateway) -> None:
    msg = sdk(gw).messages.create(model="gpt", max_tokens=2048, messages=USER,
                                     thinking={"type": "enabled", "budget_tokens": 1024})
    assert any(b.type == "text" for b in msg.content)


# -- pass-through: the client's bytes go up unchanged, the answer comes back unchanged ---------------


def test_passthrough_forwards_the_exact_bytes(gw: Gateway, recorder: TinyUpstream) -> None:
    body = (b'{"model": "recorded",  "max_tokens": 32, "system": [{"type": "text", "text": "sys", '
            b'"cache_control": {"type": "ephemeral"}}], "messages": [{"role": "user", "content": '
            b'[{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}], '
            b'"x_unknown_field": [1, 2.50, "\\u00e9"]}')
    before = len(recorder.seen)
    resp = raw(gw, body, **{"anthropic-beta": "prompt-caching-2024-07-31"})
    assert resp.status_code == 200, resp.text
    assert resp.content == RECORDED_MESSAGE
    path, headers, sent = recorder.seen[before]
    assert path == "/v1/messages"
    assert sent == body
    assert headers["x-api-key"] == ANTH_KEY and headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert KEY not in json.dumps(headers)
    stream_body = body.replace(b'"max_tokens": 32', b'"max_tokens": 32, "stream": true')
    resp = raw(gw, stream_body)
    assert resp.status_code == 200 and resp.content == RECORDED_STREAM
    assert recorder.seen[-1][2] == stream_body
    records = call_records(gw.process, lambda rs: sum(r.get("model") == "recorded" for r in rs) >= 2)
    mine = [r for r in records if r.get("model") == "recorded"]
    # the usage read on the way: every prompt token once (7 + 5 written + 11 read), cache reads apart
    assert mine[0]["prompt_tokens"] == 23 and mine[0]["completion_tokens"] == 1
    # priced like a chat answer: 12 prompt tokens at input, 11 cache reads at cached_input, 1 at output
    assert mine[0]["cost_usd"] == pytest.approx((12 * 1.0 + 11 * 0.5 + 1 * 2.0) * 1e-6)
    assert mine[1]["prompt_tokens"] == 18 and mine[1]["completion_tokens"] == 3 and mine[1]["stream"]


@pytest.mark.parametrize("mark", list(HOSTILE))
def test_passthrough_answers_that_are_not_anthropics_become_anthropic_errors(gw: Gateway, mark: str) -> None:
    """Pass-through relays Anthropic's own errors as they are; an HTML page, plain text, another API's
    error or a 200 that is not a message is turned into Anthropic's error shape (the SDK reads it), on
    /v1/messages and on count_tokens."""
    status, _, _ = HOSTILE[mark]
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        resp = raw(gw, {"model": "recorded", "max_tokens": 8,
                        "messages": [{"role": "user", "content": mark}]}, path=path)
        body = resp.json()
        assert body["type"] == "error" and body["request_id"] == resp.headers["request-id"], (path, body)
        assert resp.headers["content-type"].startswith("application/json")
        if status == 200:
            assert resp.status_code == 502 and body["error"]["type"] == "api_error", (path, body)
        else:
            assert resp.status_code == status, (path, body)
            assert "not an error of its API" in body["error"]["message"], (path, body)


# -- count_tokens ------------------------------------------------------------------------------------


def test_count_tokens_exact_upstream_and_local_estimate(sdk: Sdk, gw: Gateway) -> None:
    c = sdk(gw)
    args: dict[str, Any] = {"messages": USER, "system": "Be brief.", "tools": [WEATHER]}
    exact = c.messages.count_tokens(model="claude", **args)
    assert exact.input_tokens > 0
    local = c.messages.count_tokens(model="mock-chat", **args)
    bigger = c.messages.count_tokens(model="mock-chat", messages=[{"role": "user", "content": "word " * 200}],
                                     system="Be brief.", tools=[WEATHER])
    assert 10 < local.input_tokens < bigger.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        c.messages.count_tokens(model="no-such-model", messages=USER)
    for model in ("claude", "mock-chat"):
        resp = raw(gw, {"model": model, "messages": USER}, path="/v1/messages/count_tokens")
        assert resp.status_code == 200 and resp.headers["request-id"] == resp.headers["x-request-id"]
    deep = b'{"model": "mock-chat", "messages": [{"role": "user", "content": ' + b"[" * 5000 + b"]" * 5000 + b"}]}"
    for body in (deep, b"", b'{"model": "a", "model": "b", "messages": []}'):
        resp = raw(gw, body, path="/v1/messages/count_tokens")
        assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error", resp.text
    resp = raw(gw, {"model": "mock-chat", "messages": USER}, path="/v1/messages/count_tokens",
               key=CHAT_ONLY_KEY)
    assert resp.status_code == 403 and resp.json()["error"]["type"] == "permission_error"


# -- errors ------------------------------------------------------------------------------------------


def test_errors_in_anthropic_shape(sdk: Sdk, gw: Gateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as auth:
        sdk(gw, key="sk-wrong").messages.create(model="mock-chat", max_tokens=8, messages=USER)
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert auth.value.response.headers["request-id"]
    with pytest.raises(anthropic.PermissionDeniedError):
        sdk(gw, key=CHAT_ONLY_KEY).messages.create(model="mock-chat", max_tokens=8, messages=USER)
    assert sdk(gw, key=MESSAGES_ONLY_KEY).messages.create(model="mock-chat", max_tokens=8, messages=USER).content
    chat = httpx.post(f"http://{HOST}:{gw.port}/v1/chat/completions", headers={"x-api-key": MESSAGES_ONLY_KEY},
                      json={"model": "mock-chat", "messages": USER})
    assert chat.status_code == 403 and chat.json()["error"]["code"] == "endpoint_not_allowed"
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk(gw).messages.create(model="no-such-model", max_tokens=8, messages=USER)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        sdk(gw).messages.create(model="embed-only", max_tokens=8, messages=USER)
    resp = raw(gw, {"model": "mock-chat", "messages": USER})  # no max_tokens
    assert resp.status_code == 400
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"] and body["request_id"] == resp.headers["request-id"]
    resp = raw(gw, b"{not json")
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
    resp = httpx.get(f"http://{HOST}:{gw.port}/v1/messages", headers={"x-api-key": KEY})
    assert resp.status_code == 405 and resp.json()["type"] == "error"


def test_an_unreachable_upstream_is_an_anthropic_api_error(gw: Gateway) -> None:
    """The gateway's own 502 (the routed model's one deployment refuses connections), in Anthropic's shape."""
    resp = raw(gw, {"model": "all-down", "max_tokens": 8, "messages": USER})
    assert resp.status_code == 502, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["request_id"] == resp.headers["request-id"]


def test_upstream_overloaded_passes_through(sdk: Sdk, gw: Gateway) -> None:
    with pytest.raises(anthropic.APIStatusError) as busy:
        sdk(gw).messages.create(model="claude-busy", max_tokens=8, messages=USER)
    assert busy.value.status_code == 529
    assert busy.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_rate_limited_answer_and_the_sdk_retry(sdk: Sdk, gw: Gateway) -> None:
    """The gateway's own 429: Anthropic's shape, ``retry-after`` and ``anthropic-ratelimit-*``; the SDK
    with retries waits as told and gets through."""
    body = {"model": "limited", "max_tokens": 8, "messages": USER}
    deadline = time.monotonic() + 30.0
    while (resp := raw(gw, body)).status_code != 429:
        assert time.monotonic() < deadline
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert resp.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    with pytest.raises(anthropic.RateLimitError):
        sdk(gw).messages.create(**body)  # type: ignore[arg-type]
    msg = sdk(gw, retries=5).messages.create(**body)  # type: ignore[arg-type]
    assert msg.content


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_a_stream_cut_upstream_ends_with_an_anthropic_error_event(sdk: Sdk, gw: Gateway, model: str) -> None:
    """Translated (gpt) and pass-through (claude): the upstream drops the connection mid-stream; the
    client's stream ends with Anthropic's ``error`` event (what the SDK raises on), no ``message_stop``."""
    resp = raw(gw, {"model": model, "max_tokens": 64, "stream": True,
                    "messages": [{"role": "user", "content": "!mock cut=3 chunks=8"}]})
    assert resp.status_code == 200
    names = event_names(resp.content)
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names
    last = json.loads(resp.content.rstrip().split(b"\n")[-1][len(b"data: "):])
    assert last["error"]["type"] == "api_error" and last["request_id"] == resp.headers["request-id"]
    with pytest.raises(anthropic.APIStatusError), sdk(gw).messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "!mock cut=3 chunks=8"}],
    ) as stream:
        for _ in stream:
            pass


def test_failover_from_an_overloaded_anthropic_upstream_to_an_openai_one(sdk: Sdk, gw: Gateway) -> None:
    """Anthropic answers 529; the model's fallback (an OpenAI-dialect upstream) answers, and the client
    sees one dialect: a Messages answer, streamed or not."""
    c = sdk(gw)
    msg = c.messages.with_raw_response.create(model="claude-or-gpt", max_tokens=32, messages=USER)
    assert msg.headers["x-gateway-model"] == "gpt"
    assert msg.parse().content[0].type == "text"
    with c.messages.stream(model="claude-or-gpt", max_tokens=32, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text


def test_an_error_event_before_any_content_fails_over(sdk: Sdk, gw: Gateway, sse_error: Recorder) -> None:
    """Pass-through stream whose first event is Anthropic's ``error``: nothing is sent to the client, the
    routed model goes on to its next deployment (an OpenAI-dialect one), the client gets one clean
    Messages stream."""
    before = len(sse_error.seen)
    with sdk(gw).messages.stream(model="sse-error-or-gpt", max_tokens=32, messages=USER) as stream:
        final = stream.get_final_message()
    assert len(sse_error.seen) == before + 1
    assert final.content[0].type == "text" and final.stop_reason in ("end_turn", "max_tokens")


# -- models ------------------------------------------------------------------------------------------


def test_models_in_each_sdks_shape(sdk: Sdk, gw: Gateway) -> None:
    models = sdk(gw).models.list()
    ids = [m.id for m in models.data]
    assert "claude" in ids and "mock-chat" in ids
    assert all(m.type == "model" for m in models.data)
    assert sdk(gw).models.retrieve("claude").id == "claude"
    plain = httpx.get(f"http://{HOST}:{gw.port}/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert plain.json()["object"] == "list"


# -- the embedded default and Claude Code's way of calling ------------------------------------------


def test_default_gateway_serves_messages(default_gw: Gateway, request: pytest.FixtureRequest) -> None:
    c = anthropic.Anthropic(base_url=f"http://{HOST}:{default_gw.port}", api_key="anything", max_retries=0)
    request.addfinalizer(c.close)
    model = c.models.list().data[0].id
    msg = c.messages.create(model=model, max_tokens=32, messages=USER)
    assert msg.content[0].type == "text"
    with c.messages.stream(model=model, max_tokens=32, messages=USER) as stream:
        assert stream.get_final_message().content
    assert c.messages.count_tokens(model=model, messages=USER).input_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        c.messages.create(model="no-such-model", max_tokens=8, messages=USER)


#: betas Claude Code sends
BETAS = ["claude-code-20250219", "interleaved-thinking-2025-05-14"]


@pytest.mark.parametrize("variable", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
@pytest.mark.parametrize("model", ["mock-chat", "claude"])
def test_claude_code_style(gw: Gateway, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
                           variable: str, model: str) -> None:
    """ANTHROPIC_BASE_URL at the gateway and a gateway key as the API key (x-api-key) or auth token
    (Authorization: Bearer); streaming with tools and cache_control blocks through the beta Messages API
    (``/v1/messages?beta=true`` and ``anthropic-beta``), as Claude Code sends."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://{HOST}:{gw.port}")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.setenv(variable, KEY)
    c = anthropic.Anthropic(max_retries=0)
    request.addfinalizer(c.close)
    tools = [{**WEATHER, "cache_control": {"type": "ephemeral"}}]
    system = [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is the weather in Paris? !tool get_weather",
         "cache_control": {"type": "ephemeral"}},
    ]}]
    with c.beta.messages.stream(model=model, max_tokens=256, system=system, tools=tools,  # type: ignore[arg-type]
                                messages=messages, betas=BETAS) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert final.stop_reason == "tool_use" and use.name == "get_weather"
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny",
                                      "cache_control": {"type": "ephemeral"}}]},
    ]
    with c.beta.messages.stream(model=model, max_tokens=256, system=system, tools=tools,  # type: ignore[arg-type]
                                messages=messages, betas=BETAS) as stream:  # type: ignore[arg-type]
        answer = stream.get_final_message()
    assert any(b.type == "text" and b.text for b in answer.content)
