"""IR ⇄ Gemini (AI Studio and Vertex AI) translation, checked against the official SDKs' own types.

Golden transcripts: every Gemini stream in ``tests/fixtures/providers/{gemini,vertex}/streams`` is
translated to OpenAI chunks and compared with the checked-in ``*.openai.sse``; every one is also replayed
cut at random byte boundaries (hypothesis) and byte by byte, and must give the same bytes. Answers,
errors and requests have goldens too. Fixtures are validated with ``google-genai``'s pydantic types
(which forbid undeclared fields), translated requests part by part with the same types, translated
answers and chunks with the ``openai`` SDK's.

Each pitfall has its test: tool schemas with keywords Gemini's ``Schema`` lacks go whole as
``parametersJsonSchema`` (never dropped); thought signatures come back on the part they were given with,
through non-streamed and streamed answers; cached tokens are priced as cached input and thoughts as
output; MALFORMED_FUNCTION_CALL, SAFETY, RECITATION, MAX_TOKENS, PROHIBITED_CONTENT and blocked prompts
map to the right finish_reason or error; 429 RESOURCE_EXHAUSTED and 503 UNAVAILABLE are retryable;
parallel calls keep their own index.

Set GATEWAY_REGEN_GOLDEN=1 to rewrite the golden files (then read the diff before committing it).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from google.genai import types as gt
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway import ir
from gateway.dialects import openai_chat as oc
from gateway.dialects import openai_embeddings as oe
from gateway.errors import BadRequest
from gateway.limits.pricing import PriceConfig, price_of
from gateway.providers import gemini_translate as tr
from gateway.providers.anthropic import openai_usage

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
GEM = ROOT / "gemini"
VTX = ROOT / "vertex"
CREATED = 1700000000
REGEN = os.environ.get("GATEWAY_REGEN_GOLDEN") == "1"


def _inputs(folder: str, ext: str) -> list[Path]:
    return sorted(p for base in (GEM, VTX) for p in (base / folder).glob(f"*.{ext}")
                  if not p.name.endswith((f".openai.{ext}", ".gemini.json")) and "claude" not in p.name)


STREAMS = _inputs("streams", "sse")
RESPONSES = _inputs("responses", "json")
ERRORS = _inputs("errors", "json")
REQUESTS = sorted((GEM / "requests").glob("*.openai.json"))


def _id(p: Path) -> str:
    return f"{p.parents[1].name}/{p.stem}"


def _golden(path: Path, actual: bytes) -> bytes:
    if REGEN:
        path.write_bytes(actual)
    return path.read_bytes()


def _translate(data: bytes, cuts: list[int] | None = None, include_usage: bool = True) -> bytes:
    stream = tr.GeminiStream()
    enc = oc.ChunkEncoder(CREATED, include_usage)
    out = b""
    start = 0
    for cut in [*(cuts or []), len(data)]:
        out += enc.encode_all(stream.feed(data[start:cut]))
        start = cut
    return out + enc.encode_all(stream.close())


def _events(sse: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in sse.replace(b"\r\n", b"\n").split(b"\n\n") if e.startswith(b"data: ")]


def _chunks(sse: bytes) -> list[dict[str, Any]]:
    return [c for c in (json.loads(e[6:]) for e in sse.split(b"\n\n")
                        if e.startswith(b"data: ") and e != b"data: [DONE]")]


# ---- the fixtures are the SDK's shapes -----------------------------------------------------------


@pytest.mark.parametrize("path", STREAMS, ids=_id)
def test_stream_fixtures_are_sdk_responses(path: Path) -> None:
    for event in _events(path.read_bytes()):
        if "error" not in event:
            gt.GenerateContentResponse.model_validate(event)


@pytest.mark.parametrize("path", RESPONSES, ids=_id)
def test_response_fixtures_are_sdk_responses(path: Path) -> None:
    gt.GenerateContentResponse.model_validate_json(path.read_bytes())


def test_embedding_fixtures_are_sdk_shapes() -> None:
    for name in ("batch", "single"):
        body = json.loads((GEM / "embeddings" / f"{name}.json").read_bytes())
        for e in body.get("embeddings") or [body["embedding"]]:
            gt.ContentEmbedding.model_validate(e)
    for p in json.loads((VTX / "embeddings" / "predict.json").read_bytes())["predictions"]:
        gt.ContentEmbedding.model_validate(p["embeddings"])


# ---- goldens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", STREAMS, ids=_id)
def test_stream_golden(path: Path) -> None:
    actual = _translate(path.read_bytes())
    assert actual == _golden(path.with_suffix(".openai.sse"), actual)
    for chunk in _chunks(actual):
        if "error" not in chunk:
            ChatCompletionChunk.model_validate(chunk)


@pytest.mark.parametrize("path", STREAMS, ids=_id)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_stream_refragmented(path: Path, data: st.DataObject) -> None:
    raw = path.read_bytes()
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=40)))
    assert _translate(raw, cuts) == _translate(raw)


@pytest.mark.parametrize("path", STREAMS, ids=_id)
def test_stream_byte_by_byte(path: Path) -> None:
    raw = path.read_bytes()
    assert _translate(raw, list(range(1, len(raw)))) == _translate(raw)


def _answer_json(path: Path) -> bytes:
    answer = tr.response_from_body(path.read_bytes())
    if isinstance(answer, ir.ProviderError):
        return json.dumps({"status": answer.status, "retryable": answer.retryable,
                           "error": json.loads(oc.encode_error(answer))["error"]}, indent=2).encode() + b"\n"
    actual = oc.encode_response(answer, CREATED)
    ChatCompletion.model_validate_json(actual)
    return json.dumps(json.loads(actual), indent=2).encode() + b"\n"


@pytest.mark.parametrize("path", RESPONSES, ids=_id)
def test_response_golden(path: Path) -> None:
    actual = _answer_json(path)
    assert actual == _golden(path.with_suffix(".openai.json"), actual)


@pytest.mark.parametrize("path", ERRORS, ids=_id)
def test_error_golden(path: Path) -> None:
    status = int(path.stem.rpartition("_")[2])
    err = tr.error_from_response(status, path.read_bytes())
    actual = json.dumps({"status": err.status, "retryable": err.retryable, "provider_type": err.provider_type,
                         "error": json.loads(oc.encode_error(err))["error"]}, indent=2).encode() + b"\n"
    assert actual == _golden(path.with_suffix(".openai.json"), actual)


def _validate_request(body: dict[str, Any]) -> None:
    """Each part of a translated request against google-genai's types (they forbid unknown fields)."""
    assert set(body) <= {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                         "safetySettings", "cachedContent"}
    for c in body["contents"]:
        gt.Content.model_validate(c)
        assert c["role"] in ("user", "model")
    if "systemInstruction" in body:
        gt.Content.model_validate(body["systemInstruction"])
    for t in body.get("tools", ()):
        gt.Tool.model_validate(t)
    if "toolConfig" in body:
        gt.ToolConfig.model_validate(body["toolConfig"])
    if "generationConfig" in body:
        gt.GenerationConfig.model_validate(body["generationConfig"])


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.name)
def test_request_golden(path: Path) -> None:
    req = oc.decode_request(path.read_bytes())
    body = tr.encode_request(req, req.model)
    pretty = json.dumps(json.loads(body), indent=2).encode() + b"\n"
    target = path.with_name(path.name.replace(".openai.json", ".gemini.json"))
    assert pretty == _golden(target, pretty)
    _validate_request(json.loads(body))


# ---- pitfalls: tool schemas ----------------------------------------------------------------------


def _request(**extra: Any) -> dict[str, Any]:
    return json.loads(tr.encode_request(oc.decode_request(json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()), "gemini-2.5-flash"))


def _tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


SIMPLE = {"type": "object", "properties": {"city": {"type": "string", "description": "a city"},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 7},
                                           "unit": {"type": "string", "enum": ["c", "f"]}},
          "required": ["city"]}


@pytest.mark.parametrize("keyword,value", [
    ("additionalProperties", False),
    ("$defs", {"d": {"type": "string"}}),
    ("oneOf", [{"type": "object"}]),
    ("$schema", "http://json-schema.org/draft-07/schema#"),
    ("patternProperties", {"^x": {"type": "string"}}),
])
def test_rejected_keywords_go_whole_as_parameters_json_schema(keyword: str, value: Any) -> None:
    schema = {**SIMPLE, keyword: value}
    body = _request(tools=[_tool("f", schema)])
    decl = body["tools"][0]["functionDeclarations"][0]
    assert "parameters" not in decl
    assert decl["parametersJsonSchema"] == schema  # every keyword kept
    gt.Tool.model_validate(body["tools"][0])


@pytest.mark.parametrize("prop", [
    {"type": ["string", "null"]}, {"const": "x"}, {"type": "number", "exclusiveMinimum": 0},
    {"type": "string", "format": "email"}, {"type": "integer", "enum": [1, 2]}, {"$ref": "#/$defs/x"},
    {"type": "array", "prefixItems": [{"type": "string"}]},
])
def test_nested_rejected_keywords_too(prop: dict[str, Any]) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "object",
                                                                                "properties": {"p": prop}}}}}
    decl = _request(tools=[_tool("f", schema)])["tools"][0]["functionDeclarations"][0]
    assert decl == {"name": "f", "parametersJsonSchema": schema}


def test_openapi_subset_goes_as_parameters() -> None:
    decl = _request(tools=[_tool("f", SIMPLE)])["tools"][0]["functionDeclarations"][0]
    assert decl == {"name": "f", "parameters": SIMPLE}


def test_empty_parameters_are_left_out() -> None:
    decl = _request(tools=[_tool("f", {"type": "object", "properties": {}})])["tools"][0]["functionDeclarations"][0]
    assert decl == {"name": "f"}


# ---- pitfalls: tool choice, system messages, structured output ----------------------------------


def test_tool_choice_mapping() -> None:
    tools = [_tool("f", SIMPLE), _tool("g", SIMPLE)]
    assert "toolConfig" not in _request(tools=tools, tool_choice="auto")
    assert _request(tools=tools, tool_choice="none")["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}
    assert _request(tools=tools, tool_choice="required")["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    named = _request(tools=tools, tool_choice={"type": "function", "function": {"name": "g"}})
    assert named["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["g"]}}
    with pytest.raises(BadRequest):
        _request(tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}})


def test_system_in_the_middle_is_not_hoisted() -> None:
    body = _request(messages=[{"role": "system", "content": "first"}, {"role": "user", "content": "a"},
                              {"role": "assistant", "content": "b"}, {"role": "system", "content": "late"},
                              {"role": "user", "content": "c"}])
    assert body["systemInstruction"] == {"parts": [{"text": "first"}]}
    assert body["contents"][-1] == {"parts": [{"text": "<system>\nlate\n</system>"}, {"text": "c"}], "role": "user"}


def test_json_schema_and_json_object() -> None:
    schema = {"type": "object", "properties": {"x": {"const": 1}}, "additionalProperties": False}
    gc = _request(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    assert gc["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    gc = _request(response_format={"type": "json_object"})
    assert gc["generationConfig"] == {"responseMimeType": "application/json"}


def test_n_above_one_is_refused() -> None:
    with pytest.raises(BadRequest):
        _request(n=2)


def test_reasoning_maps_to_thinking_config() -> None:
    assert _request(reasoning_effort="low")["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True, "thinkingBudget": 1024}
    assert _request(reasoning_effort="none")["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}
    req = oc.decode_request(json.dumps({"model": "m", "reasoning_effort": "high",
                                        "messages": [{"role": "user", "content": "hi"}]}).encode())
    body = json.loads(tr.encode_request(req, "gemini-3-pro-preview"))
    assert body["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingLevel": "high"}


def test_images_inline_and_by_uri() -> None:
    png = base64.b64encode(b"\x89PNG...").decode()
    body = _request(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.webp?x=1"}}]}])
    parts = body["contents"][0]["parts"]
    assert parts[0] == {"inlineData": {"mimeType": "image/png", "data": png}}
    assert parts[1] == {"fileData": {"fileUri": "https://example.com/a.webp?x=1", "mimeType": "image/webp"}}


def test_tool_result_needs_its_call() -> None:
    with pytest.raises(BadRequest):
        _request(messages=[{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}])


# ---- pitfalls: thought signatures round trip -----------------------------------------------------


def _next_turn(assistant: dict[str, Any], tool_results: dict[str, str]) -> dict[str, Any]:
    """The Gemini request for the client's next turn, built from the assistant message it got."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris and London?"}, assistant]
    messages += [{"role": "tool", "tool_call_id": k, "content": v} for k, v in tool_results.items()]
    return json.loads(tr.encode_request(oc.decode_request(json.dumps(
        {"model": "m", "messages": messages}).encode()), "gemini-3-pro-preview"))


def test_thought_signature_round_trip_non_stream() -> None:
    answer = tr.response_from_body((GEM / "responses" / "parallel_function_calls.json").read_bytes())
    assert isinstance(answer, ir.Response)
    message = json.loads(oc.encode_response(answer, CREATED))["choices"][0]["message"]
    calls = message["tool_calls"]
    body = _next_turn(message, {c["id"]: "20 C" for c in calls})
    model_turn = body["contents"][1]
    assert model_turn["role"] == "model"
    first, second = model_turn["parts"]
    # the signature is back on the first call, byte for byte; the second has none (as given)
    assert first["thoughtSignature"] == "CiwBVKhc7nY0tJ0k2R1uYq8s0bW5cQ=="
    assert first["functionCall"] == {"name": "get_current_temperature", "args": {"location": "Paris"}}
    assert "thoughtSignature" not in second
    # both results in one user turn, named after their calls
    results = body["contents"][2]["parts"]
    assert [p["functionResponse"]["name"] for p in results] == ["get_current_temperature"] * 2
    _validate_request(body)


def test_thought_signature_round_trip_stream() -> None:
    sse = _translate((GEM / "streams" / "parallel_calls.sse").read_bytes())
    calls: dict[int, dict[str, str]] = {}
    blocks: list[dict[str, str]] = []
    content = ""
    for chunk in _chunks(sse):
        if not chunk.get("choices"):
            continue
        delta = chunk["choices"][0]["delta"]
        content += delta.get("content") or ""
        blocks += delta.get("thinking_blocks") or []
        for tc in delta.get("tool_calls") or []:
            entry = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] = tc.get("id") or entry["id"]
            entry["name"] = (tc.get("function") or {}).get("name") or entry["name"]
            entry["arguments"] += (tc.get("function") or {}).get("arguments") or ""
    assert sorted(calls) == [0, 1, 2]  # parallel calls keep their own index
    assistant = {"role": "assistant", "content": content, "thinking_blocks": blocks,
                 "tool_calls": [{"id": c["id"], "type": "function",
                                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                                for c in calls.values()]}
    body = _next_turn(assistant, {c["id"]: "ok" for c in calls.values()})
    parts = body["contents"][1]["parts"]
    assert parts[0] == {"text": "Let me check both cities."}
    assert parts[1]["thoughtSignature"] == "CiwBVKhc7nY0tJ0k2R1uYq8s0bW5cQ=="
    assert parts[1]["functionCall"]["args"] == {"location": "Paris"}
    assert all("thoughtSignature" not in p for p in parts[2:])


def test_text_signature_goes_back_on_the_text() -> None:
    answer = tr.response_from_body((GEM / "responses" / "thinking_cached.json").read_bytes())
    assert isinstance(answer, ir.Response)
    message = json.loads(oc.encode_response(answer, CREATED))["choices"][0]["message"]
    assert message["reasoning_content"].startswith("**Counting the primes**")
    body = _next_turn(message, {})
    assert body["contents"][1]["parts"] == [{"text": message["content"],
                                             "thoughtSignature": "CtUBAVSoXO5m0Kq2LHtZt1vXh3C0a9Q="}]


def test_unsigned_and_foreign_reasoning_is_not_sent() -> None:
    body = _next_turn({"role": "assistant", "content": "x", "thinking_blocks": [
        {"type": "thinking", "thinking": "a summary", "signature": ""},
        {"type": "thinking", "thinking": "Anthropic's", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxB"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}]}, {})
    assert body["contents"][1]["parts"] == [{"text": "x"}]


# ---- pitfalls: usage and pricing -----------------------------------------------------------------


def test_cached_tokens_priced_as_cached_input() -> None:
    answer = tr.response_from_body((GEM / "responses" / "thinking_cached.json").read_bytes())
    assert isinstance(answer, ir.Response)
    u = answer.usage
    # promptTokenCount (2090) includes the 2048 cached tokens: each counted once
    assert (u.input_tokens, u.cache_read_tokens, u.prompt_tokens) == (42, 2048, 2090)
    # thoughts are output tokens beside candidatesTokenCount
    assert (u.output_tokens, u.reasoning_tokens) == (22 + 189, 189)
    usage = openai_usage(u)
    assert usage.prompt_tokens == 2090 and usage.prompt_tokens_details.cached_tokens == 2048
    assert usage.total_tokens == 2301
    price = PriceConfig(input=1.0, output=4.0, cached_input=0.25)
    cost = price_of(price, usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens)
    assert cost == pytest.approx((42 * 1.0 + 2048 * 0.25 + 211 * 4.0) / 1e6)
    body = json.loads(oc.encode_response(answer, CREATED))
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 2048
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 189


def test_stream_usage_is_absolute_latest_wins() -> None:
    stream = tr.GeminiStream()
    events = stream.feed((GEM / "streams" / "thinking.sse").read_bytes()) + stream.close()
    updates = [e.usage for e in events if isinstance(e, ir.UsageUpdate)]
    final = ir.Usage(input_tokens=6, output_tokens=152, cache_read_tokens=4, reasoning_tokens=133)
    assert updates and updates[-1] == final
    assert all(a != b for a, b in itertools.pairwise(updates))  # an update only when they move
    assert stream.usage == final


# ---- pitfalls: finish reasons and errors ---------------------------------------------------------


@pytest.mark.parametrize("reason,finish", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"), ("BLOCKLIST", "content_filter"), ("SPII", "content_filter"),
    ("OTHER", "stop"),
])
def test_finish_reasons(reason: str, finish: str) -> None:
    body = json.dumps({"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"},
                                       "finishReason": reason}]}).encode()
    answer = tr.response_from_body(body)
    assert isinstance(answer, ir.Response)
    assert json.loads(oc.encode_response(answer, CREATED))["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize("reason", ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"])
def test_failed_calls_are_retryable_errors(reason: str) -> None:
    body = json.dumps({"candidates": [{"content": {}, "finishReason": reason}]}).encode()
    err = tr.response_from_body(body)
    assert isinstance(err, ir.ProviderError)
    assert (err.status, err.retryable, err.code) == (502, True, "upstream_" + reason.lower())


def test_blocked_prompt_is_a_content_filter_error() -> None:
    err = tr.response_from_body((GEM / "responses" / "prompt_blocked.json").read_bytes())
    assert isinstance(err, ir.ProviderError)
    assert (err.status, err.code, err.retryable) == (400, "content_filter", False)
    assert "PROHIBITED_CONTENT" in err.message


def test_blocked_prompt_in_a_stream_fails_before_anything_is_sent() -> None:
    stream = tr.GeminiStream()
    events = stream.feed(b'data: {"promptFeedback": {"blockReason": "SAFETY"}, "responseId": "x"}\r\n\r\n')
    assert len(events) == 1 and isinstance(events[0], ir.StreamError)
    assert events[0].error.code == "content_filter"


def test_malformed_call_in_a_stream_fails_before_anything_is_sent() -> None:
    stream = tr.GeminiStream()
    events = stream.feed((GEM / "streams" / "malformed_function_call.sse").read_bytes())
    assert len(events) == 1 and isinstance(events[0], ir.StreamError)
    assert events[0].error.retryable


@pytest.mark.parametrize("status,body,expected", [
    (429, b'{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}', (429, True)),
    (503, b'{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}', (503, True)),
    (500, b'{"error": {"code": 500, "message": "x", "status": "INTERNAL"}}', (502, True)),
    (504, b'{"error": {"code": 504, "message": "x", "status": "DEADLINE_EXCEEDED"}}', (504, True)),
    (400, b'{"error": {"code": 400, "message": "x", "status": "INVALID_ARGUMENT"}}', (400, False)),
    (403, b'{"error": {"code": 403, "message": "x", "status": "PERMISSION_DENIED"}}', (502, False)),
    (404, b'{"error": {"code": 404, "message": "x", "status": "NOT_FOUND"}}', (502, False)),
    (503, b"<html>Service Unavailable</html>", (503, True)),
    (429, b"", (429, True)),
])
def test_error_statuses(status: int, body: bytes, expected: tuple[int, bool]) -> None:
    err = tr.error_from_response(status, body)
    assert (err.status, err.retryable) == expected
    assert json.loads(oc.encode_error(err))["error"]["message"]


def test_stream_cut_before_finish_is_an_error() -> None:
    raw = (GEM / "streams" / "basic_text.sse").read_bytes()
    cut = raw[: raw.rindex(b"data: ")]
    out = _translate(cut)
    # the error event, then the stream's regular end (the engine's rule for every mid-stream error)
    assert b'"error"' in out and out.endswith(b"\n\ndata: [DONE]\n\n")
    assert b'"finish_reason":"stop"' not in out


# ---- embeddings ----------------------------------------------------------------------------------


def test_embeddings_request_and_answer() -> None:
    req = oe.decode_request(b'{"model": "e", "input": ["a", "b"], "dimensions": 4}')
    texts, dims = req.texts, req.dimensions
    assert (texts, dims, req.encoding_format) == (["a", "b"], 4, None)
    body = json.loads(tr.embed_request(texts, "gemini-embedding-001", dims))
    assert body == {"requests": [
        {"content": {"parts": [{"text": "a"}]}, "model": "models/gemini-embedding-001", "outputDimensionality": 4},
        {"content": {"parts": [{"text": "b"}]}, "model": "models/gemini-embedding-001", "outputDimensionality": 4}]}
    vectors = tr.vectors_from_embed((GEM / "embeddings" / "batch.json").read_bytes())
    out = json.loads(oe.encode_response(vectors, "gemini-embedding-001", 2, False))
    CreateEmbeddingResponse.model_validate(out)
    assert out["data"][1]["embedding"] == vectors[1] and out["data"][1]["index"] == 1
    packed = json.loads(oe.encode_response(vectors, "m", 2, True))["data"][0]["embedding"]
    assert list(struct.unpack("<4f", base64.b64decode(packed))) == pytest.approx(vectors[0], rel=1e-6)
    assert tr.vectors_from_embed((GEM / "embeddings" / "single.json").read_bytes()) == vectors[:1]


def test_vertex_predict_embeddings() -> None:
    assert json.loads(tr.predict_request(["a"], 8)) == {"instances": [{"content": "a"}],
                                                        "parameters": {"outputDimensionality": 8}}
    vectors, tokens = tr.vectors_from_predict((VTX / "embeddings" / "predict.json").read_bytes())
    assert len(vectors) == 2 and tokens == 10


def test_token_array_embeddings_are_refused() -> None:
    with pytest.raises(BadRequest):
        _ = oe.decode_request(b'{"model": "e", "input": [[1, 2, 3]]}').texts


def test_foreign_calls_get_the_documented_skip_signature_on_gemini_3() -> None:
    """A conversation begun on another provider has tool calls that never had a signature: Gemini 3 would
    refuse the turn, so their first call per step gets Google's documented stand-in. A call Gemini made
    (an id of the gateway's) that comes back unsigned is left for Gemini to refuse."""
    def body(model: str, call_id: str) -> dict[str, Any]:
        req = oc.decode_request(json.dumps({"model": "m", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": call_id + "2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "1"},
            {"role": "tool", "tool_call_id": call_id + "2", "content": "2"}]}).encode())
        return json.loads(tr.encode_request(req, model))

    parts = body("gemini-3-pro-preview", "call_abc123")["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == tr.SKIP_SIGNATURE and "thoughtSignature" not in parts[1]
    assert "thoughtSignature" not in body("gemini-2.5-flash", "call_abc123")["contents"][1]["parts"][0]
    assert "thoughtSignature" not in body("gemini-3-pro-preview", "call_g0123")["contents"][1]["parts"][0]


def test_error_event_in_any_layout() -> None:
    """An error event split over several ``data:`` lines, with spaces, is still an error (not an empty
    chunk); a text that mentions "error" is still text."""
    stream = tr.GeminiStream()
    events = stream.feed(b'data: {\ndata:   "error": {"code": 429, "message": "q", "status": "RESOURCE_EXHAUSTED"}}'
                         b"\n\n")
    assert len(events) == 1 and isinstance(events[0], ir.StreamError) and events[0].error.status == 429
    stream = tr.GeminiStream()
    text = stream.feed(b'data: {"candidates":[{"content":{"parts":[{"text":"an \\"error\\" word"}]}}]}\r\n\r\n')
    assert [e.value for e in text if isinstance(e, ir.BlockDelta)] == ['an "error" word']
