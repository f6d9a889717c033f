"""An OpenAI-dialect client, the official ``openai`` SDK, against a gateway whose upstream is Amazon Bedrock.

Real processes on loopback: ``gateway mock --dialect bedrock`` (which checks every request's SigV4
signature: its shape always, and the signature itself with the secret of the key id in its environment),
the plain OpenAI mock for the fallbacks, and a ``gateway serve`` in front of both with static test
credentials in its environment (botocore's chain finds them there). The mock itself is checked with
botocore's own ``bedrock-runtime`` client: botocore validates what it sends, parses what the mock answers
(JSON and the binary event stream) with the service model, and signs the requests the mock verifies.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import openai
import pydantic
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials

from gateway.providers.aws import AwsCredentials, SigV4Signer

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, ServerProcess, call_records, free_port

pytestmark = pytest.mark.timeout(120)

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
USER = [{"role": "user", "content": "Tell me something about gateways."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                       "required": ["zone"]}}}
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
                                     "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()
#: what the gateway process finds in its environment: botocore's chain reads the static test keys; no
#: shared file or instance metadata of this machine may leak in
AWS_ENV = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-creds",
           "AWS_EC2_METADATA_DISABLED": "true", "WRONG_SECRET": "not-the-secret", "BEDROCK_API_KEY": KEY_ID}


def _config(bedrock_port: int, mock_port: int) -> str:
    base = f"http://{HOST}:{bedrock_port}"
    return f"""
[server]
drain_timeout = 2.0
[log]
level = "info"
call_records = true

[providers.aws]
type = "bedrock"
base_url = "{base}"
read_timeout = 10.0

[providers.aws-throttled]
type = "bedrock"
base_url = "{base}"
region = "us-east-1"
[providers.aws-throttled.headers]
x-mock = "status=429"

[providers.aws-wrong-secret]
type = "bedrock"
base_url = "{base}"
region = "us-east-1"
aws_access_key_id = "env:AWS_ACCESS_KEY_ID"
aws_secret_access_key = "env:WRONG_SECRET"

[providers.aws-api-key]
type = "bedrock"
base_url = "{base}"
region = "us-east-1"
api_key = "env:BEDROCK_API_KEY"

[providers.openai]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:MOCK_KEY"

[models.claude]
provider = "aws"
upstream_model = "{CLAUDE}"

[models.nova]
provider = "aws"
upstream_model = "amazon.nova-pro-v1:0"

[models.titan]
provider = "aws"
upstream_model = "amazon.titan-embed-text-v2:0"
endpoints = ["embeddings"]

[models.cohere-embed]
provider = "aws"
upstream_model = "cohere.embed-english-v3"
endpoints = ["embeddings"]

[models.claude-api-key]
provider = "aws-api-key"
upstream_model = "{CLAUDE}"

[models.claude-wrong-secret]
provider = "aws-wrong-secret"
upstream_model = "{CLAUDE}"

[models.routed]
strategy = "cost"
deployments = [
  {{ provider = "aws-throttled", upstream_model = "{CLAUDE}", cost = 1.0 }},
  {{ provider = "openai", upstream_model = "mock-1", cost = 10.0 }},
]

[models.routed-live]
strategy = "cost"
deployments = [
  {{ provider = "aws", upstream_model = "{CLAUDE}", cost = 1.0 }},
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
def bedrock_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    proc = ServerProcess("mock-bedrock", ["mock", "--dialect", "bedrock", "--api-key", KEY_ID, "--port", str(port),
                                          "-q"], logs_dir, port,
                         env={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        _stop(proc, request, failed)


@pytest.fixture(scope="module")
def gw(bedrock_mock: int, mock_port: int, logs_dir: Path, request: pytest.FixtureRequest,
       monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    for k, v in AWS_ENV.items():
        monkeypatch_module.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
              "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch_module.delenv(k, raising=False)
    gateway = _launch("gateway-bedrock", logs_dir, config_text=_config(bedrock_mock, mock_port), workers=1,
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


def _record(gw: Gateway, request_id: str) -> dict[str, Any]:
    found = call_records(gw.process, lambda rs: any(r.get("request_id") == request_id for r in rs),
                         what=f"the call record of {request_id}")
    return next(r for r in found if r.get("request_id") == request_id)


# -- the mock, through botocore's own client --------------------------------------------------------------


@pytest.fixture(scope="module")
def boto(bedrock_mock: int) -> Iterator[Any]:
    session = botocore.session.get_session()
    client = session.create_client("bedrock-runtime", region_name="us-east-1",
                                   endpoint_url=f"http://{HOST}:{bedrock_mock}", aws_access_key_id=KEY_ID,
                                   aws_secret_access_key=SECRET, config=BotoConfig(retries={"max_attempts": 1}))
    try:
        yield client
    finally:
        client.close()


def test_botocore_converse_against_the_mock(boto: Any) -> None:
    tool = {"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER["function"]["parameters"]}}}
    out = boto.converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "hi !tool"}]}],
                        toolConfig={"tools": [tool], "toolChoice": {"any": {}}},
                        inferenceConfig={"maxTokens": 64})
    assert out["stopReason"] == "tool_use"
    use = out["output"]["message"]["content"][0]["toolUse"]
    assert use["name"] == "get_weather" and isinstance(use["input"]["city"], str)
    assert out["usage"]["totalTokens"] == out["usage"]["inputTokens"] + out["usage"]["outputTokens"]


def test_botocore_converse_stream_against_the_mock(boto: Any) -> None:
    """botocore parses the mock's binary event stream with the ConverseStreamOutput shape."""
    out = boto.converse_stream(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "hello"}]}],
                               additionalModelRequestFields={"thinking": {"type": "enabled",
                                                                           "budget_tokens": 1024}})
    kinds = []
    text = ""
    for event in out["stream"]:
        (kind, payload), = event.items()
        kinds.append(kind)
        if kind == "contentBlockDelta" and "text" in payload["delta"]:
            text += payload["delta"]["text"]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    assert text and "contentBlockStop" in kinds


def test_botocore_embeddings_against_the_mock(boto: Any) -> None:
    out = boto.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": "hi"}))
    body = json.loads(out["body"].read())
    assert len(body["embedding"]) == 16 and body["inputTextTokenCount"] >= 1


def test_the_mock_refuses_a_bad_signature(boto: Any, bedrock_mock: int) -> None:
    wrong = botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=f"http://{HOST}:{bedrock_mock}",
        aws_access_key_id=KEY_ID, aws_secret_access_key="wrong", config=BotoConfig(retries={"max_attempts": 1}))
    with pytest.raises(Exception) as info:
        wrong.converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    wrong.close()
    assert "InvalidSignatureException" in str(info.value)


# -- chat and streams through the gateway --------------------------------------------------------------


def test_chat(client: openai.OpenAI, gw: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=USER)  # type: ignore[arg-type]
    resp = raw.parse()
    assert resp.model == "claude" and resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content and len(resp.choices[0].message.content.split()) == 12
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    record = _record(gw, raw.headers["x-request-id"])
    assert record["provider"] == "aws" and record["upstream_model"] == CLAUDE
    assert record["prompt_tokens"] == resp.usage.prompt_tokens


def test_stream_with_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="claude", messages=USER)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model="claude", messages=USER, stream=True,  # type: ignore[arg-type]
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert full.usage is not None and chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_max_tokens_is_length(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="nova", messages=USER, max_tokens=4)  # type: ignore[arg-type]
    assert resp.choices[0].finish_reason == "length" and resp.usage is not None
    assert resp.usage.completion_tokens == 4


def test_tool_round_trip(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather?"}]
    first = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER],  # type: ignore[list-item]
                                           tool_choice="required")
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    second = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])  # type: ignore[list-item]
    assert "sunny" in (second.choices[0].message.content or "")


def test_parallel_tool_calls_stream_keep_their_index(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "!tool get_weather get_time please"}],
        tools=[WEATHER, TIME], stream=True)  # type: ignore[list-item]
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for tc in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] = tc.id or entry["id"]
            entry["name"] = (tc.function.name if tc.function else None) or entry["name"]
            entry["arguments"] += (tc.function.arguments if tc.function else None) or ""
    assert sorted(calls) == [0, 1] and calls[0]["name"] == "get_weather" and calls[1]["name"] == "get_time"
    assert "city" in json.loads(calls[0]["arguments"]) and "zone" in json.loads(calls[1]["arguments"])


def test_foreign_tool_ids_are_made_valid_and_mapped_back(client: openai.OpenAI) -> None:
    """An id from another provider (``functions.get_weather:0``) breaks Bedrock's id pattern: the mock
    refuses it unless it is escaped, and the reply to the result still quotes it."""
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [{"id": "functions.get_weather:0", "type": "function",
                                                      "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "hail"}]
    resp = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])  # type: ignore[arg-type]
    assert "hail" in (resp.choices[0].message.content or "")


def test_a_bedrock_api_key_is_sent_as_bearer(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="claude-api-key", messages=USER)  # type: ignore[arg-type]
    assert resp.choices[0].message.content


def test_tool_choice_none_stays_none(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "!tool get_weather now"}], tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none")
    assert resp.choices[0].finish_reason == "stop" and not resp.choices[0].message.tool_calls


def test_thinking_signature_round_trip(client: openai.OpenAI) -> None:
    """The reasoning block and its signature go back byte for byte: the mock refuses the turn otherwise."""
    first = client.chat.completions.create(model="claude", messages=USER, reasoning_effort="low")  # type: ignore[arg-type]
    blocks = first.choices[0].message.model_extra["thinking_blocks"]  # type: ignore[index]
    assert blocks and blocks[0]["signature"]
    messages = [*USER, {"role": "assistant", "content": first.choices[0].message.content,
                        "thinking_blocks": blocks}, {"role": "user", "content": "And more?"}]
    second = client.chat.completions.create(model="claude", messages=messages, reasoning_effort="low")  # type: ignore[arg-type]
    assert second.choices[0].message.content
    tampered = [{**blocks[0], "thinking": blocks[0]["thinking"] + " (edited)"}]
    messages[1] = {**messages[1], "thinking_blocks": tampered}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="claude", messages=messages)  # type: ignore[arg-type]


def test_images_as_base64_and_urls_refused(client: openai.OpenAI) -> None:
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    resp = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])  # type: ignore[misc]
    assert resp.choices[0].message.content
    url = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": url}])  # type: ignore[misc]


class Weather(pydantic.BaseModel):
    city: str
    celsius: float
    sunny: bool


def test_json_schema_parse(client: openai.OpenAI) -> None:
    resp = client.chat.completions.parse(model="claude", messages=USER, response_format=Weather)  # type: ignore[arg-type]
    assert isinstance(resp.choices[0].message.parsed, Weather)
    stream_text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="claude", messages=USER, stream=True,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": Weather.model_json_schema()}})
        if c.choices)
    Weather.model_validate_json(stream_text)


def test_guardrail_is_content_filter(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "!guardrail x"}])
    assert resp.choices[0].finish_reason == "content_filter"


# -- embeddings ------------------------------------------------------------------------------------------


def test_titan_embeddings(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model="titan", input="hello")  # the SDK asks for base64
    assert len(resp.data) == 1 and len(resp.data[0].embedding) == 16 and resp.usage.prompt_tokens >= 1
    floats = client.embeddings.create(model="titan", input="hello", encoding_format="float", dimensions=8)
    assert len(floats.data[0].embedding) == 8
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="titan", input=["a", "b"])


def test_cohere_on_bedrock_embeddings(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model="cohere-embed", input=["hello", "world"])
    assert [d.index for d in resp.data] == [0, 1] and resp.data[0].embedding != resp.data[1].embedding


# -- errors, credentials and failover ------------------------------------------------------------------


@pytest.mark.parametrize("status, code", [(400, 400), (429, 429), (503, 503), (403, 502), (500, 502)])
def test_error_statuses(client: openai.OpenAI, status: int, code: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.with_options(max_retries=0).chat.completions.create(
            model="claude", messages=[{"role": "user", "content": f"!mock status={status}"}])
    assert info.value.status_code == code


def test_a_wrong_secret_is_the_operators_failure(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.with_options(max_retries=0).chat.completions.create(model="claude-wrong-secret", messages=USER)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_authentication"  # type: ignore[index]


def test_throttled_primary_fails_over(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="routed", messages=USER)  # type: ignore[arg-type]
    assert raw.headers["x-gateway-deployment"] == "openai/mock-1"
    assert raw.parse().choices[0].message.content


def test_stream_exception_before_content_fails_over(client: openai.OpenAI) -> None:
    """ConverseStream answers 200 and then a throttlingException message: nothing was sent to the client,
    so the routed model moves on to its OpenAI deployment, and the client sees one OpenAI stream."""
    raw = client.chat.completions.with_raw_response.create(
        model="routed-live", messages=[{"role": "user", "content": "!exception throttlingException now"}],
        stream=True)
    assert raw.headers["x-gateway-deployment"] == "openai/mock-1"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_stream_exception_on_a_direct_model_ends_the_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "!exception modelStreamErrorException"}],
            stream=True))


# -- signing cost ----------------------------------------------------------------------------------------


def test_signing_adds_headers_only_and_freezes_credentials_once() -> None:
    """The signer reads the frozen credentials (no refresh on the request path) and gives the signature
    headers; botocore's own SigV4Auth, given the same instant, computes the same signature."""
    creds = AwsCredentials(Credentials(KEY_ID, SECRET))
    signer = SigV4Signer(creds, "us-east-1", "https://bedrock-runtime.us-east-1.amazonaws.com",
                         "bedrock-runtime.us-east-1.amazonaws.com")
    path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    headers = dict(signer.headers(path, b'{"messages":[]}'))
    assert set(headers) == {"authorization", "x-amz-date"}
    day = headers["x-amz-date"][:8]
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/{day}/us-east-1/bedrock/"
                                               "aws4_request, SignedHeaders=content-type;host;x-amz-date, ")
    check = AWSRequest("POST", "https://bedrock-runtime.us-east-1.amazonaws.com" + path, data=b'{"messages":[]}',
                       headers={"content-type": "application/json", "host": "bedrock-runtime.us-east-1.amazonaws.com",
                                "X-Amz-Date": headers["x-amz-date"]})
    check.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(Credentials(KEY_ID, SECRET).get_frozen_credentials(), "bedrock", "us-east-1")
    signature = auth.signature(auth.string_to_sign(check, auth.canonical_request(check)), check)
    assert headers["authorization"].endswith("Signature=" + signature)
