"""IR ⇄ Cohere API v2 translation, checked against the ``cohere`` SDK's own pydantic types.

Translated requests are validated part by part with the SDK's ``ChatMessageV2``, ``ToolV2``,
``ResponseFormatV2`` and ``Thinking`` types; the documented answers and stream events in
``tests/fixtures/providers/cohere`` with ``V2ChatResponse``, ``StreamedChatResponseV2`` and
``EmbedByTypeResponse``. Streams are replayed whole, byte by byte and cut at random boundaries. Pitfalls:
tool calls keep their index next to content blocks, the tool plan is reasoning, citations are dropped,
usage takes ``tokens`` and counts cached tokens once, ``ERROR`` finishes fail the stream, named tool
choices, the status table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cohere
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from gateway import ir
from gateway.dialects import openai_chat as oc
from gateway.errors import BadRequest
from gateway.providers import cohere_translate as tr

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "providers" / "cohere"
STREAMS = sorted(p.stem for p in (FIX / "streams").glob("*.sse"))
MESSAGE = TypeAdapter(cohere.ChatMessageV2)
TOOL = TypeAdapter(cohere.ToolV2)
FORMAT = TypeAdapter(cohere.ResponseFormatV2)
EVENT = TypeAdapter(cohere.StreamedChatResponseV2)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def request(**fields: Any) -> ir.Request:
    body = {"model": "command", "messages": [{"role": "user", "content": "hi"}], **fields}
    return oc.decode_request(json.dumps(body).encode())


def validated(req: ir.Request) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(tr.encode_request(req, "command-a-03-2025"))
    for m in body["messages"]:
        MESSAGE.validate_python(m, strict=False)
    for t in body.get("tools", []):
        TOOL.validate_python(t)
    if "response_format" in body:
        FORMAT.validate_python(body["response_format"])
    if "thinking" in body:
        cohere.Thinking.model_validate(body["thinking"])
    if "tool_choice" in body:
        assert body["tool_choice"] in ("REQUIRED", "NONE")
    return body


def replay(data: bytes, cuts: list[int] | None = None) -> list[ir.StreamEvent]:
    machine = tr.CohereStream("command")
    out: list[ir.StreamEvent] = []
    start = 0
    for cut in [*(cuts or []), len(data)]:
        out += machine.feed(data[start:cut])
        start = cut
    return out + machine.close()


def test_full_request_validates_with_the_sdk_types() -> None:
    body = validated(request(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                  "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "developer", "content": "Answer in French."}],
        tools=[WEATHER], tool_choice="required", max_tokens=200, top_p=0.5, top_k=10, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        reasoning_effort="low"))
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "system"]
    assert body["tool_choice"] == "REQUIRED" and body["p"] == 0.5 and body["k"] == 10
    assert body["response_format"] == {"type": "json_object", "json_schema": {"type": "object"}}
    assert body["thinking"] == {"type": "enabled", "token_budget": 2048}


def test_tool_choice_none_and_named() -> None:
    assert validated(request(tools=[WEATHER], tool_choice="none"))["tool_choice"] == "NONE"
    named = validated(request(tools=[WEATHER, TIME],
                              tool_choice={"type": "function", "function": {"name": "get_time"}}))
    assert named["tool_choice"] == "REQUIRED" and [t["function"]["name"] for t in named["tools"]] == ["get_time"]
    assert "tool_choice" not in validated(request(tools=[WEATHER], tool_choice="auto"))


def test_file_documents_are_refused() -> None:
    with pytest.raises(BadRequest):
        tr.encode_request(request(messages=[{"role": "user", "content": [
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}}]}]), "command")


@pytest.mark.parametrize("name", ["text", "tool_call", "citations"])
def test_documented_answers_validate_and_translate(name: str) -> None:
    body = (FIX / "responses" / f"{name}.json").read_bytes()
    cohere.V2ChatResponse.model_validate_json(body)
    answer = tr.response_from_body(body, "command")
    out = json.loads(oc.encode_response(answer, 1700000000))
    choice = out["choices"][0]
    if name == "text":
        assert out["usage"]["prompt_tokens"] == 211  # tokens, not billed_units
    if name == "tool_call":
        assert choice["finish_reason"] == "tool_calls" and len(choice["message"]["tool_calls"]) == 2
        assert choice["message"]["reasoning_content"].startswith("I will search")
    if name == "citations":
        assert "citations" not in choice["message"] and choice["message"]["content"].startswith("The tallest")


def test_embed_answer() -> None:
    body = (FIX / "responses" / "embed.json").read_bytes()
    cohere.EmbedByTypeResponse.model_validate_json(body)
    vectors, tokens = tr.embeddings_from_body(body, ["hello", "goodbye"])
    assert len(vectors) == 2 and tokens == 2


@pytest.mark.parametrize("name", STREAMS)
def test_documented_stream_events_validate(name: str) -> None:
    for block in (FIX / "streams" / f"{name}.sse").read_text().split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            EVENT.validate_json(data[0])


@pytest.mark.parametrize("name", STREAMS)
def test_streams_same_whole_and_byte_by_byte(name: str) -> None:
    data = (FIX / "streams" / f"{name}.sse").read_bytes()
    assert replay(data, list(range(1, len(data)))) == replay(data)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(STREAMS), data=st.data())
def test_streams_cut_at_random_boundaries(name: str, data: st.DataObject) -> None:
    raw = (FIX / "streams" / f"{name}.sse").read_bytes()
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=12)))
    assert replay(raw, cuts) == replay(raw)


def test_tool_stream_plan_then_calls_with_their_own_index() -> None:
    events = replay((FIX / "streams" / "tools.sse").read_bytes())
    enc = oc.ChunkEncoder(1700000000, include_usage=True)
    chunks = [json.loads(p[6:]) for p in enc.encode_all(events).decode().split("\n\n") if p.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas).startswith("I will search")
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert [(c["index"], c["id"]) for c in calls if "id" in c] == [(0, "get_weather_1byjy32y4hvq"),
                                                                  (1, "get_weather_wx2a8x6c3b1d")]
    args = {0: "", 1: ""}
    for c in calls:
        args[c["index"]] += c["function"].get("arguments") or ""
    assert json.loads(args[0]) == {"location": "Toronto"} and json.loads(args[1]) == {"location": "Paris"}
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens"] == 913 and usage["prompt_tokens_details"]["cached_tokens"] == 512


def test_citations_are_skipped_and_max_tokens_is_length() -> None:
    events = replay((FIX / "streams" / "citations.sse").read_bytes())
    assert isinstance(events[-1], ir.MessageStop) and oc.finish_reason(events[-1].stop_reason) == "length"


def test_an_error_finish_fails_the_stream() -> None:
    events = replay((FIX / "streams" / "error.sse").read_bytes())
    assert isinstance(events[-1], ir.StreamError) and events[-1].error.retryable


def test_a_cut_stream_fails() -> None:
    data = (FIX / "streams" / "text.sse").read_bytes()
    events = replay(data[: data.index(b"event: message-end")])
    assert isinstance(events[-1], ir.StreamError) and events[-1].error.code == "bad_gateway"


@pytest.mark.parametrize("name, status, code, retryable", [
    ("rate_limited", 429, "rate_limit_exceeded", True),
    ("invalid_token", 502, "upstream_authentication", False),
    ("too_long", 400, "context_length_exceeded", False),
])
def test_error_table(name: str, status: int, code: str, retryable: bool) -> None:
    fx = json.loads((FIX / "errors" / f"{name}.json").read_text())
    err = tr.error_from_response(fx["status"], json.dumps(fx["body"]).encode())
    assert (err.status, err.code, err.retryable) == (status, code, retryable)
