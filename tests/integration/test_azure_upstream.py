"""An ``azure`` provider through real processes: ``gateway serve`` in front of ``gateway mock --dialect
azure --api-key K``, driven by the plain ``openai.OpenAI`` client (the gateway speaks OpenAI; Azure is its
upstream's business).

Both paths (``azure_path = "deployments"``: the deployment in the path and ``api-version`` in the query;
``"v1"``: the deployment as the body's ``model``) and both credentials (``api_key`` sent as ``api-key``,
``azure_ad_token`` as a bearer token) are checked against the mock, which refuses a wrong path, a missing
``api-version`` or a wrong credential exactly as Azure does. Azure's extra fields (content-filter results,
the stream's first chunk with empty ``choices``) must not break usage accounting or the SDK. Content-filter
refusals come from a tiny Azure-shaped upstream in the test (``TinyUpstream``; the mock has no such cue).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from .conftest import MOCK_KEY, Gateway, _launch
from .helpers import HOST, ServerProcess, call_records, free_port
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(120)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

#: (model the client names, provider, deployment): one per path and credential
CHAT_MODELS = [
    ("dep-key", "az-dep-key", "gpt4o-prod"),
    ("dep-token", "az-dep-token", "gpt4o-entra"),
    ("v1-key", "az-v1-key", "gpt4o-v1"),
    ("v1-token", "az-v1-token", "gpt4o-v1-entra"),
]


class City(BaseModel):
    name: str
    population: int


# -- a tiny Azure-shaped upstream for content-filter refusals -----------------------------------------

_FILTER = {"hate": {"filtered": True, "severity": "high"}, "self_harm": {"filtered": False, "severity": "safe"},
           "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}
PROMPT_FILTERED = {"error": {
    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
    "type": None, "param": "prompt", "code": "content_filter", "status": 400,
    "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": _FILTER}}}


def _completion_filtered(stream: bool) -> tuple[bytes, str]:
    """A completion Azure cut because the output tripped the filter (``finish_reason: content_filter``)."""
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    if not stream:
        return json.dumps({
            "id": "chatcmpl-cf", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
            "choices": [{"index": 0, "finish_reason": "content_filter", "content_filter_results": _FILTER,
                         "message": {"role": "assistant", "content": None}}],
            "usage": usage}).encode(), "application/json"
    head = {"id": "chatcmpl-cf", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    events = [
        {"choices": [], "created": 0, "id": "", "model": "", "object": "",
         "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Once"},
                              "finish_reason": None, "content_filter_results": {}}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter",
                              "content_filter_results": _FILTER}]},
        {**head, "choices": [], "usage": usage},
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return body, "text/event-stream"


def _filtering_answer(path: str, headers: dict[str, str], raw: bytes) -> tuple[int, str, bytes]:
    """Azure when its content filter trips: on the prompt (400 ``content_filter``) when the last message
    says ``bad prompt``, else on the completion (``finish_reason: content_filter``)."""
    body = json.loads(raw)
    if "bad prompt" in body["messages"][-1]["content"]:
        return 400, "application/json", json.dumps(PROMPT_FILTERED).encode()
    out, ctype = _completion_filtered(bool(body.get("stream")))
    return 200, ctype, out


# -- processes ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azure_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("azure-mock")
    port = free_port()
    proc = ServerProcess("mock-azure", ["mock", "--port", str(port), "-q", "--dialect", "azure",
                                        "--api-key", MOCK_KEY], tmp, port).start()
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def filtering() -> Iterator[TinyUpstream]:
    up = TinyUpstream(_filtering_answer)
    try:
        yield up
    finally:
        up.close()


def _azure_provider(name: str, port: int, **keys: str) -> str:
    text = f'\n[providers.{name}]\ntype = "azure"\nbase_url = "http://{HOST}:{port}"\nread_timeout = 10.0\n'
    return text + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def _model(name: str, provider: str, deployment: str, endpoints: str = '["chat", "completions"]') -> str:
    return (f'\n[models.{name}]\nprovider = "{provider}"\nupstream_model = "{deployment}"\n'
            f"endpoints = {endpoints}\n")


@pytest.fixture(scope="module")
def gateway(azure_mock: int, filtering: TinyUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("azure-gateway")
    wrong = tmp / "wrong.key"
    wrong.write_text("not-the-key\n")
    text = '[log]\nlevel = "info"\ncall_records = true\n'
    text += _azure_provider("az-dep-key", azure_mock, api_key="env:MOCK_KEY")
    text += _azure_provider("az-dep-token", azure_mock, azure_ad_token="env:MOCK_KEY", api_version="2024-10-21")
    text += _azure_provider("az-v1-key", azure_mock, api_key="env:MOCK_KEY", azure_path="v1")
    text += _azure_provider("az-v1-token", azure_mock, azure_ad_token="env:MOCK_KEY", azure_path="v1")
    text += _azure_provider("az-wrong", azure_mock, api_key=f"file:{wrong}")
    text += _azure_provider("az-filter", filtering.port, api_key="env:MOCK_KEY")
    for model, provider, deployment in CHAT_MODELS:
        text += _model(model, provider, deployment)
    text += _model("embed-dep", "az-dep-key", "embed-small", '["embeddings"]')
    text += _model("embed-v1", "az-v1-token", "embed-small-v1", '["embeddings"]')
    text += _model("wrong-key", "az-wrong", "gpt4o-prod")
    text += _model("filtered", "az-filter", "cf")
    gw = _launch("gateway-azure", tmp, config_text=text, workers=1, frontend="native")
    try:
        yield gw
    finally:
        gw.process.stop()


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    c = gateway.client()
    try:
        yield c
    finally:
        c.close()


def _records_for(gateway: Gateway, request_id: str) -> dict[str, Any]:
    recs = call_records(gateway.process, lambda rs: any(r.get("request_id") == request_id for r in rs),
                        what=f"the call record of {request_id}")
    return next(r for r in recs if r.get("request_id") == request_id)


# -- chat, stream, tools, structured output, embeddings ---------------------------------------------------


@pytest.mark.parametrize(("model", "provider", "deployment"), CHAT_MODELS)
def test_chat(client: openai.OpenAI, gateway: Gateway, model: str, provider: str, deployment: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello azure"}])
    done = raw.parse()
    assert done.object == "chat.completion"
    assert done.model == deployment  # what the deployment answers: the mock echoes the deployment name
    assert done.choices[0].message.content and done.choices[0].finish_reason == "stop"
    assert (done.model_extra or {}).get("prompt_filter_results")  # Azure's extras reach the client
    assert done.usage is not None and done.usage.total_tokens > 0
    rec = _records_for(gateway, raw.headers["x-request-id"])
    assert rec["status"] == 200 and rec["upstream_status"] == 200
    assert rec["provider"] == provider and rec["upstream_model"] == deployment
    assert rec["total_tokens"] == done.usage.total_tokens


@pytest.mark.parametrize(("model", "provider", "deployment"), CHAT_MODELS)
def test_stream_with_usage(client: openai.OpenAI, gateway: Gateway, model: str, provider: str,
                           deployment: str) -> None:
    """Azure's first chunk (empty ``choices``, empty ``id``) and its content-filter fields pass through;
    the usage the client asked for arrives once, and the gateway counts it."""
    stream = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "tell me a story"}], stream=True,
        stream_options={"include_usage": True})
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    assert chunks[0].choices == [] and (chunks[0].model_extra or {}).get("prompt_filter_results")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1 and chunks[-1].usage is not None and chunks[-1].choices == []
    rec = _records_for(gateway, request_id)
    assert rec["stream"] is True and rec["completion_tokens"] == usages[0].completion_tokens > 0


def test_stream_without_usage_still_counts(client: openai.OpenAI, gateway: Gateway) -> None:
    """The client did not ask for usage: the gateway asks Azure for it, counts it, and strips the chunk."""
    stream = client.chat.completions.with_raw_response.create(
        model="dep-key", messages=[{"role": "user", "content": "another story"}], stream=True)
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    rec = _records_for(gateway, request_id)
    assert rec["completion_tokens"] > 0


@pytest.mark.parametrize("model", ["dep-key", "v1-token"])
def test_tools(client: openai.OpenAI, model: str) -> None:
    done = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "weather in Paris?"}], tools=[WEATHER],
        tool_choice="required")
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert done.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "weather in Oslo? !tool get_weather"}],
        tools=[WEATHER], stream=True)
    names = [tc.function.name for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []
             if tc.function and tc.function.name]
    assert names == ["get_weather"]


@pytest.mark.parametrize("model", ["dep-key", "v1-token"])
def test_images(client: openai.OpenAI, gateway: Gateway, model: str) -> None:
    """Vision requests (a URL and inline base64) go to Azure as they are and are answered."""
    pixel = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA"
             "60e6kgAAAABJRU5ErkJggg==")
    for url in ("https://example.com/cat.png", pixel):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}])
        done = raw.parse()
        assert done.choices[0].message.content and done.choices[0].finish_reason == "stop"
        assert _records_for(gateway, raw.headers["x-request-id"])["status"] == 200


@pytest.mark.parametrize("model", ["dep-token", "v1-key"])
def test_json_schema(client: openai.OpenAI, model: str) -> None:
    parsed = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "a city"}], response_format=City)
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and city.name


@pytest.mark.parametrize(("model", "deployment"), [("embed-dep", "embed-small"), ("embed-v1", "embed-small-v1")])
def test_embeddings(client: openai.OpenAI, gateway: Gateway, model: str, deployment: str) -> None:
    raw = client.embeddings.with_raw_response.create(model=model, input=["one", "two"], dimensions=8)
    done = raw.parse()
    assert len(done.data) == 2 and len(done.data[0].embedding) == 8
    assert done.model == deployment
    rec = _records_for(gateway, raw.headers["x-request-id"])
    assert rec["upstream_model"] == deployment and rec["prompt_tokens"] > 0


# -- errors ------------------------------------------------------------------------------------------


def test_wrong_key_surfaces_as_an_upstream_error(client: openai.OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="wrong-key", messages=[{"role": "user", "content": "hi"}])
    err = info.value
    # the gateway's credential was refused, not the client's: a 502, without Azure's words about the key
    assert err.status_code == 502 and not isinstance(err, openai.AuthenticationError)
    assert "Access denied" not in err.message and "credentials" in err.message
    rec = _records_for(gateway, err.response.headers["x-request-id"])
    assert rec["upstream_status"] == 401 and rec["error_code"] == "upstream_authentication"


@pytest.mark.parametrize("stream", [False, True])
def test_rate_limited_keeps_the_retry_headers(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="dep-key", stream=stream,
            messages=[{"role": "user", "content": "!mock status=429 retry_after=7"}])
    headers = info.value.response.headers
    assert headers["retry-after"] == "7"
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_prompt_content_filter_passes_through(client: openai.OpenAI, filtering: TinyUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="filtered", messages=[{"role": "user", "content": "a bad prompt"}])
    err = info.value
    assert err.status_code == 400 and err.code == "content_filter"
    body = err.body
    assert isinstance(body, dict) and body["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    path, headers, _ = filtering.seen[-1]
    assert path == "/openai/deployments/cf/chat/completions?api-version=2024-10-21"
    assert headers["api-key"] == MOCK_KEY and "authorization" not in headers


def test_deployments_path_forwards_the_clients_bytes(gateway: Gateway, filtering: TinyUpstream) -> None:
    """The deployment is in the path, so the body's ``model`` (the gateway's name, not the deployment's)
    is not rewritten: the client's bytes go up as they came (the pass-through fast path)."""
    import httpx

    body = b'{ "model": "filtered",  "messages": [{"role": "user", "content": "a story"}], "seed": 1 }'
    resp = httpx.post(f"{gateway.base_url}/chat/completions", content=body,
                      headers={"content-type": "application/json", "x-request-id": "bytes-1"})
    assert resp.status_code == 200
    (sent,) = [s for s in filtering.seen if s[1].get("x-request-id") == "bytes-1"]
    assert sent[0].startswith("/openai/deployments/cf/chat/completions?") and sent[2] == body


def test_completion_content_filter_passes_through(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="filtered", messages=[{"role": "user", "content": "a story"}])
    done = raw.parse()
    assert done.choices[0].finish_reason == "content_filter"
    assert _records_for(gateway, raw.headers["x-request-id"])["total_tokens"] == 7
    stream = client.chat.completions.create(
        model="filtered", messages=[{"role": "user", "content": "a story"}], stream=True)
    reasons = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    assert reasons == ["content_filter"]


def test_unknown_deployment_is_azures_404(client: openai.OpenAI, tmp_path: Path, azure_mock: int) -> None:
    """A sanity check of the wiring: a deployment path without ``api-version`` is refused by the mock, so
    the gateway's answers above prove the path and query it sends."""
    import httpx

    resp = httpx.post(f"http://{HOST}:{azure_mock}/openai/deployments/x/chat/completions",
                      headers={"api-key": MOCK_KEY}, json={"messages": []})
    assert resp.status_code == 404


def test_a_rotated_token_is_used_after_a_reload(azure_mock: int, tmp_path: Path) -> None:
    """The Entra ID token is read at load time: whatever renews it rewrites the file and reloads the
    gateway (SIGHUP), which then sends the new token although the config's reference did not change."""
    import signal

    from .helpers import wait_for

    token = tmp_path / "entra.token"
    token.write_text("expired-token\n")
    text = _azure_provider("az", azure_mock, azure_ad_token=f"file:{token}") + _model("chat", "az", "gpt4o-prod")
    gw = _launch("gateway-azure-rotate", tmp_path, config_text=text, workers=1, frontend="native")
    c = gw.client()
    try:
        with pytest.raises(openai.InternalServerError) as info:  # Azure refused the gateway's token: 502
            c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 502
        token.write_text(MOCK_KEY + "\n")
        gw.process.send_signal(signal.SIGHUP)

        def served() -> bool:
            try:
                c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
            except openai.InternalServerError as exc:
                assert exc.status_code == 502
                return False
            return True

        wait_for(served, 30.0, interval=0.2, what="the reloaded token to be sent")
    finally:
        c.close()
        gw.process.stop()
