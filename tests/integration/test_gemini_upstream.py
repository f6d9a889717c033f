"""An OpenAI-dialect client, the official ``openai`` SDK, against a gateway whose upstreams speak Gemini
(``type = "gemini"``) and Vertex AI (``type = "vertex"``, Gemini and Claude models).

Real processes on loopback: ``gateway mock --dialect gemini`` (AI Studio's and Vertex AI's paths), the
plain OpenAI mock for the fallbacks, a ``gateway serve`` in front of them, and in this process a fake
OAuth token endpoint: the Vertex provider's credentials are a service-account key file (an RSA key made
here) whose ``token_uri`` points at it, so google-auth signs and exchanges a real JWT grant on loopback.
The token it hands out is the mock's key, so the mock checks the bearer the gateway sends.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, ServerProcess, call_records, free_port
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(120)

KEY = "gemini-integration-key"
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
#: JSON-Schema keywords Gemini's ``parameters`` Schema refuses (the mock answers 400 as Gemini does)
BOOKING = {
    "type": "function",
    "function": {
        "name": "book",
        "strict": True,
        "parameters": {
            "type": "object",
            "$defs": {"day": {"type": "string", "format": "date"}},
            "properties": {"day": {"$ref": "#/$defs/day"}, "seats": {"type": "integer", "exclusiveMinimum": 0},
                           "note": {"type": ["string", "null"]}},
            "required": ["day", "seats", "note"],
            "additionalProperties": False,
        },
    },
}
PNG = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                  "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
).decode()


# -- the fake token endpoint and the service account -----------------------------------------------------


class TokenEndpoint(TinyUpstream):
    """Google's OAuth token endpoint as google-auth's service-account flow uses it: a JWT-bearer grant in,
    an access token (the mock's key) out."""

    def __init__(self) -> None:
        super().__init__(self._answer)

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        form = urllib.parse.parse_qs(body.decode())
        if path != "/token" or form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return 400, "application/json", b'{"error": "invalid_grant"}'
        claims = json.loads(base64.urlsafe_b64decode(form["assertion"][0].split(".")[1] + "=="))
        if claims.get("scope") != "https://www.googleapis.com/auth/cloud-platform":
            return 400, "application/json", b'{"error": "invalid_scope"}'
        return 200, "application/json", json.dumps(
            {"access_token": KEY, "expires_in": 3600, "token_type": "Bearer"}).encode()

    @property
    def grants(self) -> int:
        return len(self.seen)


def service_account_file(path: Path, token_uri: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "test-project", "private_key_id": "0123456789abcdef",
        "private_key": pem, "client_email": "gateway@test-project.iam.gserviceaccount.com",
        "client_id": "100000000000000000001", "token_uri": token_uri,
    }))
    return path


def _config(gem_port: int, mock_port: int, sa_file: Path) -> str:
    base = f"http://{HOST}:{gem_port}"
    return f"""
[server]
drain_timeout = 2.0
[log]
level = "info"
call_records = true

[providers.gemini]
type = "gemini"
base_url = "{base}/v1beta"
api_key = "env:GEMINI_KEY"
read_timeout = 10.0

[providers.gemini-down]
type = "gemini"
base_url = "{base}/v1beta"
api_key = "env:GEMINI_KEY"
[providers.gemini-down.headers]
x-mock = "status=503"

[providers.gemini-badkey]
type = "gemini"
base_url = "{base}/v1beta"
api_key = "env:WRONG_KEY"

[providers.vertex]
type = "vertex"
base_url = "{base}/v1"
project = "test-project"
location = "europe-west4"
credentials_file = "{sa_file}"

[providers.openai]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:MOCK_KEY"

[models.gemini]
provider = "gemini"
upstream_model = "gemini-2.5-flash"

[models.gemini3]
provider = "gemini"
upstream_model = "gemini-3-pro-preview"

[models.gemini-embed]
provider = "gemini"
upstream_model = "gemini-embedding-001"
endpoints = ["embeddings"]

[models.gemini-badkey]
provider = "gemini-badkey"
upstream_model = "gemini-2.5-flash"

[models.vertex]
provider = "vertex"
upstream_model = "gemini-2.5-flash"

[models.vertex3]
provider = "vertex"
upstream_model = "gemini-3-pro-preview"

[models.vertex-claude]
provider = "vertex"
upstream_model = "claude-sonnet-4-5"

[models.vertex-embed]
provider = "vertex"
upstream_model = "text-embedding-005"
endpoints = ["embeddings"]

[models.gemini-down]
provider = "gemini-down"
upstream_model = "gemini-2.5-flash"
fallbacks = ["openai-backup"]

[models.mixed]
strategy = "cost"
deployments = [
  {{ provider = "gemini-down", upstream_model = "gemini-2.5-flash", cost = 1.0 }},
  {{ provider = "openai", upstream_model = "mock-1", cost = 10.0 }},
]

[models.mixed-refused]
strategy = "cost"
deployments = [
  {{ provider = "gemini", upstream_model = "gemini-2.5-flash", cost = 1.0 }},
  {{ provider = "openai", upstream_model = "mock-1", cost = 10.0 }},
]

[models.openai-backup]
provider = "openai"
upstream_model = "mock-1"
"""


@pytest.fixture(scope="module")
def gemini_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    proc = ServerProcess("mock-gemini", ["mock", "--dialect", "gemini", "--api-key", KEY,
                                         "--port", str(port), "-q"], logs_dir, port).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        _stop(proc, request, failed)


@pytest.fixture(scope="module")
def token_endpoint() -> Iterator[TokenEndpoint]:
    tok = TokenEndpoint()
    try:
        yield tok
    finally:
        tok.close()


@pytest.fixture(scope="module")
def gw(gemini_mock: int, mock_port: int, token_endpoint: TokenEndpoint, logs_dir: Path,
       request: pytest.FixtureRequest) -> Iterator[Gateway]:
    mp = pytest.MonkeyPatch()
    mp.setenv("GEMINI_KEY", KEY)
    mp.setenv("WRONG_KEY", "not-the-key")
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    sa = service_account_file(logs_dir / "vertex-sa.json", f"http://{HOST}:{token_endpoint.port}/token")
    config = _config(gemini_mock, mock_port, sa)
    gateway = _launch("gateway-gemini", logs_dir, config_text=config, workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gateway
    finally:
        _stop(gateway.process, request, failed)
        mp.undo()


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    c = gw.client()
    try:
        yield c
    finally:
        c.close()


def _record(gw: Gateway, request_id: str) -> dict[str, Any]:
    found = call_records(gw.process, lambda rs: any(r.get("request_id") == request_id for r in rs),
                         what=f"the call record of {request_id}")
    return next(r for r in found if r.get("request_id") == request_id)


def _stream_calls(stream: Any) -> tuple[dict[int, dict[str, str]], str | None, list[dict[str, Any]], str]:
    calls: dict[int, dict[str, str]] = {}
    finish = None
    blocks: list[dict[str, Any]] = []
    text = ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        blocks += (delta.model_extra or {}).get("thinking_blocks") or []
        for tc in delta.tool_calls or ():
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] = tc.id or entry["id"]
            if tc.function and tc.function.name:
                entry["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                entry["arguments"] += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    return calls, finish, blocks, text


# -- chat and streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gemini", "vertex"])
def test_chat(client: openai.OpenAI, gw: Gateway, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=USER)
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.model == "gemini-2.5-flash"
    assert resp.choices[0].message.content and len(resp.choices[0].message.content.split()) == 12
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12
    record = _record(gw, raw.headers["x-request-id"])
    assert record["provider"] == model and record["upstream_model"] == "gemini-2.5-flash"
    assert record["status"] == 200 and record["completion_tokens"] == 12


@pytest.mark.parametrize("model", ["gemini", "vertex"])
def test_stream_with_usage(client: openai.OpenAI, gw: Gateway, model: str) -> None:
    full = client.chat.completions.create(model=model, messages=USER)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=USER, stream=True, stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert raw.headers.get("content-type", "").startswith("text/event-stream")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    assert full.usage is not None and chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    record = _record(gw, raw.headers["x-request-id"])
    assert record["stream"] is True and record["completion_tokens"] == 12


def test_max_tokens_is_length(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gemini", messages=USER, max_tokens=5)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5


# -- tools ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gemini", "vertex"])
def test_tool_call_required(client: openai.OpenAI, model: str) -> None:
    resp = client.chat.completions.create(model=model, messages=USER, tools=[WEATHER],  # type: ignore[list-item]
                                          tool_choice="required")
    assert resp.choices[0].finish_reason == "tool_calls"
    calls = resp.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1 and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)


def test_tool_choice_none_stays_none(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "!tool get_time"}],
                                          tools=[WEATHER, TIME], tool_choice="none")  # type: ignore[list-item]
    assert resp.choices[0].finish_reason == "stop" and not resp.choices[0].message.tool_calls


def test_named_tool_choice(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gemini", messages=USER, tools=[WEATHER, TIME],  # type: ignore[list-item]
                                          tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = resp.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_time"]


@pytest.mark.parametrize("model", ["gemini", "vertex"])
def test_parallel_tool_calls_stream_keep_their_index(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "!tool get_weather get_time please"}],
        tools=[WEATHER, TIME], stream=True)  # type: ignore[list-item]
    calls, finish, _, _ = _stream_calls(stream)
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "get_weather" and calls[1]["name"] == "get_time"
    assert "city" in json.loads(calls[0]["arguments"]) and "zone" in json.loads(calls[1]["arguments"])
    assert calls[0]["id"] != calls[1]["id"]


def test_tool_schema_with_keywords_gemini_rejects(client: openai.OpenAI) -> None:
    """``$ref``/``$defs``, ``exclusiveMinimum``, type lists, ``additionalProperties``: sent whole as
    ``parametersJsonSchema`` (the mock, like Gemini, refuses them in ``parameters``), and the arguments the
    model makes follow the schema, ``$ref`` included."""
    resp = client.chat.completions.create(model="gemini", messages=USER, tools=[BOOKING],  # type: ignore[list-item]
                                          tool_choice="required")
    calls = resp.choices[0].message.tool_calls
    assert calls is not None
    args = json.loads(calls[0].function.arguments)
    assert set(args) == {"day", "seats", "note"} and args["seats"] > 0
    time.strptime(args["day"], "%Y-%m-%d")


@pytest.mark.parametrize("model", ["gemini3", "vertex3"])
@pytest.mark.parametrize("stream", [False, True])
def test_thought_signature_round_trip(client: openai.OpenAI, model: str, stream: bool) -> None:
    """Gemini 3 refuses a function call of the current turn sent back without its thought signature; the
    gateway carries it to the client (``thinking_blocks``) and puts it back on the same part."""
    ask = [{"role": "user", "content": "!tool get_weather get_time in Paris"}]
    if stream:
        calls, finish, blocks, text = _stream_calls(client.chat.completions.create(
            model=model, messages=ask, tools=[WEATHER, TIME], stream=True))  # type: ignore[arg-type, list-item]
        tool_calls = [{"id": c["id"], "type": "function",
                       "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls.values()]
    else:
        first = client.chat.completions.create(model=model, messages=ask, tools=[WEATHER, TIME])  # type: ignore[arg-type, list-item]
        msg = first.choices[0].message
        finish, text = first.choices[0].finish_reason, msg.content or ""
        blocks = (msg.model_extra or {}).get("thinking_blocks") or []
        tool_calls = [{"id": c.id, "type": "function",
                       "function": {"name": c.function.name, "arguments": c.function.arguments}}
                      for c in msg.tool_calls or ()]
    assert finish == "tool_calls" and len(tool_calls) == 2
    assert [b["type"] for b in blocks] == ["thinking"] and blocks[0]["signature"]
    assistant = {"role": "assistant", "content": text or None, "tool_calls": tool_calls, "thinking_blocks": blocks}
    results = [{"role": "tool", "tool_call_id": c["id"], "content": f"result of {c['function']['name']}"}
               for c in tool_calls]
    second = client.chat.completions.create(model=model, tools=[WEATHER, TIME],  # type: ignore[list-item]
                                            messages=[*ask, assistant, *results])  # type: ignore[list-item]
    assert "result of get_time" in (second.choices[0].message.content or "")
    # the same turn without the signature is refused by the upstream: a 400 in the client's dialect
    bare = {k: v for k, v in assistant.items() if k != "thinking_blocks"}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, tools=[WEATHER, TIME],  # type: ignore[list-item]
                                       messages=[*ask, bare, *results])  # type: ignore[list-item]
    assert "thought_signature" in str(info.value)


def test_tool_calls_of_another_provider_go_to_gemini_3(client: openai.OpenAI) -> None:
    """A conversation whose tool calls another provider made (no thought signature ever) moves to a Gemini 3
    model (a fallback, say): the gateway signs them with Google's documented stand-in, not refused."""
    resp = client.chat.completions.create(model="gemini3", tools=[WEATHER], messages=[  # type: ignore[list-item]
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_Xk3openai", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_Xk3openai", "content": "rainy"}])  # type: ignore[list-item]
    assert "rainy" in (resp.choices[0].message.content or "")


# -- images, structured output, reasoning ----------------------------------------------------------------


@pytest.mark.parametrize("url", [f"data:image/png;base64,{PNG}", "https://example.com/cat.png"])
@pytest.mark.parametrize("model", ["gemini", "vertex"])
def test_images(client: openai.OpenAI, url: str, model: str) -> None:
    resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}])  # type: ignore[list-item]
    assert resp.choices[0].message.content


class City(pydantic.BaseModel):
    name: str
    population: int
    landmarks: list[str]
    founded: int | None = None


@pytest.mark.parametrize("model", ["gemini", "vertex"])
def test_json_schema_parse(client: openai.OpenAI, model: str) -> None:
    resp = client.beta.chat.completions.parse(model=model, messages=USER, response_format=City)
    assert isinstance(resp.choices[0].message.parsed, City)


def test_json_object(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gemini", messages=USER, response_format={"type": "json_object"})
    assert isinstance(json.loads(resp.choices[0].message.content or ""), dict)


def test_reasoning_tokens_and_summaries(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gemini", messages=USER, reasoning_effort="low")
    assert resp.usage is not None and resp.usage.completion_tokens_details is not None
    reasoning = resp.usage.completion_tokens_details.reasoning_tokens or 0
    assert reasoning > 0
    # thoughts are output tokens too: the completion counts the 12 words and the reasoning
    assert resp.usage.completion_tokens == 12 + reasoning
    assert (resp.choices[0].message.model_extra or {}).get("reasoning_content")


def test_cached_tokens(client: openai.OpenAI, gw: Gateway) -> None:
    system = {"role": "system", "content": "You are terse. " * 40}
    raw = client.chat.completions.with_raw_response.create(
        model="gemini", messages=[system, {"role": "user", "content": "!cache hello"}])  # type: ignore[list-item]
    resp = raw.parse()
    assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
    cached = resp.usage.prompt_tokens_details.cached_tokens or 0
    assert 0 < cached < resp.usage.prompt_tokens
    # the same prompt size without the cue: the same promptTokenCount upstream, nothing cached. Gemini's
    # promptTokenCount already includes the cached tokens: counted once, the total does not grow
    plain = client.chat.completions.create(
        model="gemini", messages=[system, {"role": "user", "content": "xcache hello"}])  # type: ignore[list-item]
    assert plain.usage is not None and plain.usage.prompt_tokens == resp.usage.prompt_tokens
    assert not (plain.usage.prompt_tokens_details and plain.usage.prompt_tokens_details.cached_tokens)
    record = _record(gw, raw.headers["x-request-id"])
    assert record["prompt_tokens"] == resp.usage.prompt_tokens and record["cached_tokens"] == cached


# -- finish reasons and errors ---------------------------------------------------------------------------


def _say(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("cue", ["!refuse", "!finish RECITATION", "!finish PROHIBITED_CONTENT", "!finish SAFETY"])
@pytest.mark.parametrize("stream", [False, True])
def test_safety_stops_are_content_filter(client: openai.OpenAI, cue: str, stream: bool) -> None:
    if stream:
        _, finish, _, _ = _stream_calls(client.chat.completions.create(model="gemini", messages=_say(cue),  # type: ignore[arg-type]
                                                                       stream=True))
    else:
        finish = client.chat.completions.create(model="gemini", messages=_say(cue)).choices[0].finish_reason  # type: ignore[arg-type]
    assert finish == "content_filter"


def test_finish_max_tokens(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gemini", messages=_say("!finish MAX_TOKENS"))  # type: ignore[arg-type]
    assert resp.choices[0].finish_reason == "length"


def test_malformed_function_call_is_a_retryable_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gemini", messages=_say("!finish MALFORMED_FUNCTION_CALL"))  # type: ignore[arg-type]
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_malformed_function_call"


def test_blocked_prompt_is_400_content_filter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gemini", messages=_say("!block"))  # type: ignore[arg-type]
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "content_filter"
    assert "SAFETY" in str(info.value)
    # streamed: the error event (no content before it), which the SDK raises
    with pytest.raises(openai.APIError) as streamed:
        list(client.chat.completions.create(model="gemini", messages=_say("!block"), stream=True))  # type: ignore[arg-type]
    assert "SAFETY" in str(streamed.value)


def test_rate_limited_429(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.with_options(max_retries=0).chat.completions.create(
            model="gemini", messages=_say("!mock status=429 retry_after=2 please"))  # type: ignore[arg-type]
    assert info.value.response.headers.get("retry-after") == "2"
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "rate_limit_exceeded"


def test_unavailable_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.with_options(max_retries=0).chat.completions.create(
            model="gemini", messages=_say("!mock status=503 now"))  # type: ignore[arg-type]
    assert info.value.status_code == 503


def test_invalid_key_is_the_operators_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.with_options(max_retries=0).chat.completions.create(model="gemini-badkey", messages=USER)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_authentication"


def test_completions_endpoint_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="gemini", prompt="hi")


# -- failover --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_from_an_unavailable_gemini(client: openai.OpenAI, gw: Gateway, stream: bool) -> None:
    for model in ("gemini-down", "mixed"):
        raw = client.with_options(max_retries=0).chat.completions.with_raw_response.create(
            model=model, messages=USER, stream=stream)  # type: ignore[arg-type, call-overload]
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].message.content or ""
        assert len(text.split()) == 12
        record = _record(gw, raw.headers["x-request-id"])
        assert record["provider"] == "openai" and record["status"] == 200


def test_stream_refused_at_its_first_event_fails_over(client: openai.OpenAI, gw: Gateway) -> None:
    """A Gemini stream whose first event is a failed answer (a malformed function call) has sent the
    client nothing: routing tries the next deployment, in the same OpenAI dialect."""
    raw = client.with_options(max_retries=0).chat.completions.with_raw_response.create(
        model="mixed-refused", messages=_say("!finish MALFORMED_FUNCTION_CALL"), stream=True)  # type: ignore[arg-type]
    chunks = list(raw.parse())
    assert chunks[-1].choices[0].finish_reason == "stop"
    record = _record(gw, raw.headers["x-request-id"])
    assert record["provider"] == "openai"


# -- embeddings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gemini-embed", "vertex-embed"])
def test_embeddings(client: openai.OpenAI, gw: Gateway, model: str) -> None:
    floats = client.embeddings.create(model=model, input=["first text", "second text"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert all(len(d.embedding) == 16 for d in floats.data)
    assert floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens > 0
    # the SDK's default asks for base64: the same vectors, packed
    packed = client.embeddings.with_raw_response.create(model=model, input=["first text", "second text"],
                                                        dimensions=16, encoding_format="base64")
    body = json.loads(packed.http_response.content)
    vec = list(struct.unpack("<16f", base64.b64decode(body["data"][0]["embedding"])))
    assert vec == pytest.approx(floats.data[0].embedding, rel=1e-6)
    default = client.embeddings.create(model=model, input="first text", dimensions=8)
    assert len(default.data[0].embedding) == 8


# -- Vertex AI credentials and Claude on Vertex ------------------------------------------------------------


def test_vertex_token_comes_from_google_auth_once(client: openai.OpenAI, token_endpoint: TokenEndpoint) -> None:
    """The bearer is a real google-auth service-account grant (the mock checks the token), fetched by the
    refresh task once per worker, not per request."""
    for _ in range(5):
        assert client.chat.completions.create(model="vertex", messages=USER).choices[0].message.content
    assert token_endpoint.grants == 1


@pytest.mark.parametrize("stream", [False, True])
def test_claude_on_vertex(client: openai.OpenAI, gw: Gateway, stream: bool) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="vertex-claude", messages=USER, stream=stream,  # type: ignore[call-overload]
        **({"stream_options": {"include_usage": True}} if stream else {}))
    if stream:
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        resp = raw.parse()
        text, usage = resp.choices[0].message.content or "", resp.usage
    assert len(text.split()) == 12
    assert usage is not None and usage.completion_tokens == 12
    record = _record(gw, raw.headers["x-request-id"])
    assert record["provider"] == "vertex" and record["upstream_model"] == "claude-sonnet-4-5"


def test_claude_on_vertex_tools(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="vertex-claude", messages=USER, tools=[WEATHER],  # type: ignore[list-item]
                                          tool_choice="required")
    calls = resp.choices[0].message.tool_calls
    assert resp.choices[0].finish_reason == "tool_calls" and calls and calls[0].function.name == "get_weather"
