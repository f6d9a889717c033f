"""``gateway mock --dialect gemini`` checked against the official ``google-genai`` SDK.

Two ways: the SDK itself as the client (its requests must be accepted, on AI Studio's and on Vertex AI's
paths, and its parsers must read the answers), and raw HTTP, every body and stream chunk validated with
the SDK's pydantic types, which forbid fields they do not declare (the SDK's own parsers drop unknown
fields, so only the raw check catches a shape Gemini never sends).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gt
from google.oauth2.credentials import Credentials

from gateway.providers.mock_gemini import signature_valid

from .conftest import _stop
from .helpers import HOST, ServerProcess, free_port

pytestmark = pytest.mark.timeout(90)

KEY = "gemini-mock-key"
NO_RETRY = gt.HttpRetryOptions(attempts=1)


@pytest.fixture(scope="module")
def port(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    p = free_port()
    proc = ServerProcess("mock-gemini-sdk", ["mock", "--dialect", "gemini", "--api-key", KEY, "--port", str(p),
                                             "--chunks", "4", "-q"], logs_dir, p).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield p
    finally:
        _stop(proc, request, failed)


@pytest.fixture
def sdk(port: int) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=gt.HttpOptions(base_url=f"http://{HOST}:{port}",
                                                                 api_version="v1beta", retry_options=NO_RETRY))


@pytest.fixture
def vertex(port: int) -> genai.Client:
    return genai.Client(vertexai=True, project="test-project", location="us-central1",
                        credentials=Credentials(token=KEY),
                        http_options=gt.HttpOptions(base_url=f"http://{HOST}:{port}", retry_options=NO_RETRY))


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


def get_time(zone: str) -> str:
    """The time in a zone."""
    return "noon"


class City(pydantic.BaseModel):
    name: str
    population: int
    landmarks: list[str]


# -- the SDK as the client ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["sdk", "vertex"])
def test_sdk_generate(request: pytest.FixtureRequest, which: str) -> None:
    client: genai.Client = request.getfixturevalue(which)
    r = client.models.generate_content(model="gemini-2.5-flash", contents="Hello there")
    assert r.text and len(r.text.split()) == 12
    assert r.candidates and r.candidates[0].finish_reason == gt.FinishReason.STOP
    assert r.usage_metadata and r.usage_metadata.candidates_token_count == 12


@pytest.mark.parametrize("which", ["sdk", "vertex"])
def test_sdk_stream(request: pytest.FixtureRequest, which: str) -> None:
    client: genai.Client = request.getfixturevalue(which)
    whole = client.models.generate_content(model="gemini-2.5-flash", contents="Hello there").text
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="Hello there"))
    assert len(chunks) == 4
    assert "".join(c.text or "" for c in chunks) == whole
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == gt.FinishReason.STOP


def test_sdk_tools_thinking_and_signatures(sdk: genai.Client) -> None:
    config = gt.GenerateContentConfig(
        tools=[get_weather, get_time], automatic_function_calling=gt.AutomaticFunctionCallingConfig(disable=True),
        thinking_config=gt.ThinkingConfig(include_thoughts=True, thinking_budget=1024))
    r = sdk.models.generate_content(model="gemini-2.5-flash", contents="!tool get_weather get_time", config=config)
    assert [c.name for c in r.function_calls or ()] == ["get_weather", "get_time"]
    assert r.candidates and r.candidates[0].content and r.candidates[0].content.parts
    parts = r.candidates[0].content.parts
    assert parts[0].thought and parts[0].text
    assert parts[1].thought_signature and parts[2].thought_signature is None
    # the SDK sends the model turn back as it got it: accepted
    history = [gt.Content(role="user", parts=[gt.Part(text="!tool get_weather get_time")]), r.candidates[0].content,
               gt.Content(role="user", parts=[
                   gt.Part.from_function_response(name="get_weather", response={"result": "sunny"}),
                   gt.Part.from_function_response(name="get_time", response={"result": "noon"})])]
    again = sdk.models.generate_content(model="gemini-2.5-flash", contents=history, config=config)  # type: ignore[arg-type]
    assert "noon" in (again.text or "")
    # without the signature: refused, as Gemini 3 refuses it
    stripped = r.candidates[0].content.model_copy(
        update={"parts": [p.model_copy(update={"thought_signature": None}) for p in parts]})
    with pytest.raises(genai_errors.ClientError) as info:
        sdk.models.generate_content(model="gemini-2.5-flash", contents=[history[0], stripped, history[2]],
                                    config=config)  # type: ignore[arg-type]
    assert info.value.code == 400 and "thought_signature" in str(info.value)


@pytest.mark.parametrize("which", ["sdk", "vertex"])
def test_sdk_structured_output(request: pytest.FixtureRequest, which: str) -> None:
    client: genai.Client = request.getfixturevalue(which)
    for config in (gt.GenerateContentConfig(response_mime_type="application/json", response_schema=City),
                   gt.GenerateContentConfig(response_mime_type="application/json",
                                            response_json_schema=City.model_json_schema())):
        r = client.models.generate_content(model="gemini-2.5-flash", contents="A city, please", config=config)
        City.model_validate_json(r.text or "")


def test_sdk_embeddings(sdk: genai.Client) -> None:
    r = sdk.models.embed_content(model="gemini-embedding-001", contents=["a", "b"],
                                 config=gt.EmbedContentConfig(output_dimensionality=8))
    assert r.embeddings and [len(e.values or ()) for e in r.embeddings] == [8, 8]


def test_sdk_count_tokens_and_models(sdk: genai.Client) -> None:
    assert (sdk.models.count_tokens(model="gemini-2.5-flash", contents="Hello there").total_tokens or 0) > 0
    models = list(sdk.models.list())
    assert models and all(m.name and m.name.startswith("models/") for m in models)


def test_sdk_errors(sdk: genai.Client, port: int) -> None:
    with pytest.raises(genai_errors.ClientError) as info:
        sdk.models.generate_content(model="gemini-2.5-flash", contents="!mock status=429 now")
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(genai_errors.ServerError) as server:
        sdk.models.generate_content(model="gemini-2.5-flash", contents="!mock status=503 now")
    assert server.value.code == 503 and server.value.status == "UNAVAILABLE"
    bad = genai.Client(api_key="wrong", http_options=gt.HttpOptions(base_url=f"http://{HOST}:{port}",
                                                                     retry_options=NO_RETRY))
    with pytest.raises(genai_errors.ClientError) as key:
        bad.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert key.value.code == 400 and "API key not valid" in str(key.value)


# -- raw HTTP, validated with the SDK's strict types ----------------------------------------------------


def _post(port: int, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"http://{HOST}:{port}{path}", json=body, timeout=10.0,
                      headers={"x-goog-api-key": KEY, **headers})


GEN = "/v1beta/models/gemini-2.5-flash"
VTX = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash"
TOOLS = [{"functionDeclarations": [
    {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "book", "parametersJsonSchema": {"type": "object", "$defs": {"d": {"type": "string"}},
                                              "properties": {"day": {"$ref": "#/$defs/d"}},
                                              "additionalProperties": False}}]}]
BODIES: list[dict[str, Any]] = [
    {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]},
    {"contents": [{"role": "user", "parts": [{"text": "!tool get_weather book"}]}], "tools": TOOLS,
     "generationConfig": {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 512}}},
    {"contents": [{"role": "user", "parts": [{"text": "json"}]}],
     "generationConfig": {"responseMimeType": "application/json",
                          "responseJsonSchema": City.model_json_schema()}},
    {"contents": [{"role": "user", "parts": [{"text": "!refuse"}]}]},
    {"contents": [{"role": "user", "parts": [{"text": "!finish RECITATION"}]}]},
    {"contents": [{"role": "user", "parts": [{"text": "!finish MALFORMED_FUNCTION_CALL"}]}]},
    {"contents": [{"role": "user", "parts": [{"text": "!block"}]}]},
    {"contents": [{"role": "user", "parts": [{"text": "!cache a long prompt"}]}], "generationConfig": {
        "maxOutputTokens": 3, "stopSequences": ["zzz"]}},
]


@pytest.mark.parametrize("path", [GEN, VTX])
@pytest.mark.parametrize("i", range(len(BODIES)))
def test_raw_answers_are_sdk_responses(port: int, path: str, i: int) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    whole = _post(port, path + ":generateContent", BODIES[i], **auth)
    assert whole.status_code == 200, whole.text
    answer = gt.GenerateContentResponse.model_validate_json(whole.content)
    stream = _post(port, path + ":streamGenerateContent?alt=sse", BODIES[i], **auth)
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    events = [e for e in stream.content.split(b"\r\n\r\n") if e]
    chunks = [gt.GenerateContentResponse.model_validate_json(e.removeprefix(b"data: ")) for e in events]
    assert all(e.startswith(b"data: ") for e in events)
    # the last chunk carries what the whole answer ends with
    if answer.candidates:
        assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == answer.candidates[0].finish_reason
    assert chunks[-1].usage_metadata == answer.usage_metadata
    for c in chunks + [answer]:
        for cand in c.candidates or ():
            for p in (cand.content.parts if cand.content else None) or ():
                if p.thought_signature:
                    assert signature_valid(base64.b64encode(p.thought_signature).decode())
    # without alt=sse: one JSON array of the same chunks
    array = _post(port, path + ":streamGenerateContent", BODIES[i], **auth)
    same = [gt.GenerateContentResponse.model_validate(c) for c in json.loads(array.content)]
    assert [c.model_copy(update={"response_id": None}) for c in same] == [
        c.model_copy(update={"response_id": None}) for c in chunks]


def test_raw_embeddings_are_sdk_shapes(port: int) -> None:
    one = _post(port, "/v1beta/models/gemini-embedding-001:embedContent",
                {"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4})
    gt.ContentEmbedding.model_validate(one.json()["embedding"])
    many = _post(port, "/v1beta/models/gemini-embedding-001:batchEmbedContents", {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}} for t in "ab"]})
    assert [len(gt.ContentEmbedding.model_validate(e).values or ()) for e in many.json()["embeddings"]] == [16, 16]
    pred = _post(port, "/v1/projects/p/locations/us-central1/publishers/google/models/text-embedding-005:predict",
                 {"instances": [{"content": "a"}]}, authorization=f"Bearer {KEY}")
    gt.ContentEmbedding.model_validate(pred.json()["predictions"][0]["embeddings"])


@pytest.mark.parametrize("body,message", [
    ({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "bogus": 1}, 'Unknown name "bogus"'),
    ({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "tools": [{"functionDeclarations": [
        {"name": "f", "parameters": {"type": "object", "additionalProperties": False}}]}]},
     'Unknown name "additionalProperties"'),
    ({"contents": [{"role": "user", "parts": [{"text": "x", "thoughtSignature": "bm90IGEgbW9jayBzaWc="}]}]},
     "Corrupted thought signature"),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
    ({"contents": []}, "contents is not specified"),
])
def test_raw_refusals_are_googles(port: int, body: dict[str, Any], message: str) -> None:
    resp = _post(port, GEN + ":generateContent", body)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and message in err["message"]


def test_vertex_needs_a_bearer(port: int) -> None:
    resp = httpx.post(f"http://{HOST}:{port}{VTX}:generateContent", json=BODIES[0], timeout=10.0)
    assert resp.status_code == 401 and resp.json()["error"]["status"] == "UNAUTHENTICATED"


def test_claude_on_vertex_raw_predict(port: int) -> None:
    import anthropic.types as at

    path = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5"
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]}
    auth = {"authorization": f"Bearer {KEY}"}
    msg = at.Message.model_validate_json(_post(port, path + ":rawPredict", body, **auth).content)
    assert msg.model == "claude-sonnet-4-5" and msg.stop_reason == "end_turn"
    stream = _post(port, path + ":streamRawPredict", {**body, "stream": True}, **auth)
    assert b"event: message_stop" in stream.content
    assert _post(port, path + ":rawPredict", {**body, "model": "x"}, **auth).status_code == 400
    assert _post(port, path + ":rawPredict", {**body, "anthropic_version": "2023-06-01"}, **auth).status_code == 400
