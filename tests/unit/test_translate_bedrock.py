"""IR ⇄ Amazon Bedrock Converse translation, checked against botocore's ``bedrock-runtime`` service model.

Translated requests are validated with botocore's own ``ParamValidator`` against the ``Converse`` input
shape; the mock's answers and stream events against the ``Converse`` output and ``ConverseStreamOutput``
shapes. The transcripts of ``tests/fixtures/providers/bedrock`` (from AWS's documentation) are framed in
AWS's binary event-stream encoding and replayed whole, byte by byte and cut at random boundaries
(hypothesis): every way must give the same IR events. Each pitfall has its test: tool_choice none,
mid-conversation system messages, tool-id escapes, reasoning signatures, usage with cache tokens (each
prompt token once), the stop-reason table, the error table, a held messageStop until the usage arrives, a
broken checksum.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from pathlib import Path
from typing import Any

import botocore.session
import msgspec
import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.validate import ParamValidator
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import ir
from gateway.dialects import openai_chat as oc
from gateway.errors import BadRequest
from gateway.providers import bedrock_translate as tr
from gateway.providers.mock_bedrock import event_message

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "providers" / "bedrock"
MODEL = "anthropic.claude-3-7-sonnet-20250219-v1:0"
SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")
CONVERSE_IN = SERVICE.operation_model("Converse").input_shape
CONVERSE_OUT = SERVICE.operation_model("Converse").output_shape
STREAM_OUT = SERVICE.operation_model("ConverseStream").output_shape.members["stream"]
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
                                     "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()
STREAMS = sorted(p.stem for p in (FIX / "streams").glob("*.jsonl"))


# ---- helpers: botocore's view ----------------------------------------------------------------------

_BLOBS = ("bytes", "redactedContent")


def _as_params(value: Any, key: str = "") -> Any:
    """A JSON body as botocore params: blobs (base64 on the wire) as bytes."""
    if isinstance(value, dict):
        return {k: _as_params(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_params(v) for v in value]
    if key in _BLOBS and isinstance(value, str):
        return base64.b64decode(value)
    return value


def validate_converse_request(body: bytes, model: str = MODEL) -> dict[str, Any]:
    """The body, checked with botocore's ParamValidator against the Converse input shape."""
    params = _as_params(json.loads(body))
    report = ParamValidator().validate({"modelId": model, **params}, CONVERSE_IN)
    assert not report.has_errors(), report.generate_report()
    return params  # type: ignore[no-any-return]


def validate_shape(payload: dict[str, Any], shape: Any) -> None:
    report = ParamValidator().validate(_as_params(payload), shape)
    assert not report.has_errors(), report.generate_report()


def frame(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(event_message(line["headers"], json.dumps(line["payload"]).encode()) for line in lines)


def stream_of(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIX / "streams" / f"{name}.jsonl").read_text().splitlines() if line]


def replay(data: bytes, cuts: list[int] | None = None) -> list[ir.StreamEvent]:
    machine = tr.BedrockStream("chatcmpl-1", "claude")
    out: list[ir.StreamEvent] = []
    start = 0
    for cut in [*(cuts or []), len(data)]:
        out += machine.feed(data[start:cut])
        start = cut
    return out + machine.close()


def request(**fields: Any) -> ir.Request:
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], **fields}
    return oc.decode_request(json.dumps(body).encode())


# ---- requests ---------------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


def test_full_request_is_a_valid_converse_input() -> None:
    req = request(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Be brief.",
                                            "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                                         {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PNG}",
                                                                   "filename": "report_2024.pdf"}}]},
            {"role": "assistant", "content": None,
             "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
                                 {"type": "redacted_thinking", "data": "cmVk"}],
             "tool_calls": [{"id": "functions.get_weather:0", "type": "function",
                             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "sunny"},
        ],
        tools=[WEATHER], tool_choice="required", max_tokens=300, temperature=0.3, top_p=0.9, stop=["END"],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}},
        metadata={"team": "search"},
    )
    params = validate_converse_request(tr.encode_request(req, MODEL))
    assert params["system"] == [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}]
    assert params["toolConfig"]["toolChoice"] == {"any": {}}
    assert params["inferenceConfig"] == {"maxTokens": 300, "temperature": 0.3, "topP": 0.9, "stopSequences": ["END"]}
    fmt = params["outputConfig"]["textFormat"]
    assert fmt["type"] == "json_schema" and json.loads(fmt["structure"]["jsonSchema"]["schema"])["required"] == ["a"]
    assistant = params["messages"][1]["content"]
    assert assistant[0] == {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "c2ln"}}}
    assert assistant[1] == {"reasoningContent": {"redactedContent": b"red"}}
    use_id = assistant[2]["toolUse"]["toolUseId"]
    assert use_id.startswith("gwx_") and tr.restore_tool_id(use_id) == "functions.get_weather:0"
    assert params["messages"][2]["content"][0]["toolResult"]["toolUseId"] == use_id
    assert params["messages"][0]["content"][2]["document"]["name"] == "report 2024 pdf"


def test_tool_choice_none_leaves_the_tools_out() -> None:
    params = validate_converse_request(tr.encode_request(request(tools=[WEATHER], tool_choice="none"), MODEL))
    assert "toolConfig" not in params


def test_tool_choice_none_with_tool_history_keeps_the_config_and_says_no() -> None:
    req = request(tools=[WEATHER], tool_choice="none", messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    ])
    params = validate_converse_request(tr.encode_request(req, MODEL))
    assert "toolChoice" not in params["toolConfig"]
    assert params["system"][-1]["text"] == "Do not call any tool in this turn."


def test_named_tool_choice_and_auto() -> None:
    named = request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert validate_converse_request(tr.encode_request(named, MODEL))["toolConfig"]["toolChoice"] == {
        "tool": {"name": "get_weather"}}
    auto = request(tools=[WEATHER], tool_choice="auto")
    assert validate_converse_request(tr.encode_request(auto, MODEL))["toolConfig"]["toolChoice"] == {"auto": {}}


def test_a_system_message_in_mid_conversation_is_not_hoisted() -> None:
    req = request(messages=[{"role": "system", "content": "first"}, {"role": "user", "content": "a"},
                            {"role": "assistant", "content": "b"}, {"role": "system", "content": "later"},
                            {"role": "user", "content": "c"}])
    params = validate_converse_request(tr.encode_request(req, MODEL))
    assert params["system"] == [{"text": "first"}]
    assert params["messages"][2]["content"] == [{"text": "<system>\nlater\n</system>"}, {"text": "c"}]


def test_thinking_reaches_claude_only_and_drops_temperature() -> None:
    req = request(reasoning_effort="low", temperature=0.5, top_k=5)
    params = validate_converse_request(tr.encode_request(req, MODEL))
    assert params["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 2048}}
    assert "temperature" not in params["inferenceConfig"]
    other = validate_converse_request(tr.encode_request(req, "amazon.nova-pro-v1:0"), "amazon.nova-pro-v1:0")
    assert "additionalModelRequestFields" not in other and other["inferenceConfig"]["temperature"] == 0.5


def test_image_urls_are_refused_never_fetched() -> None:
    with pytest.raises(BadRequest):
        tr.encode_request(request(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]), MODEL)


def test_n_above_one_is_refused() -> None:
    with pytest.raises(BadRequest):
        tr.encode_request(request(n=2), MODEL)


# ---- answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["text", "tool_use", "reasoning_cached", "guardrail"])
def test_documented_answers_match_the_service_model_and_translate(name: str) -> None:
    body = (FIX / "responses" / f"{name}.json").read_bytes()
    validate_shape(json.loads(body), CONVERSE_OUT)
    answer = tr.response_from_body(body, "chatcmpl-1", "claude")
    out = json.loads(oc.encode_response(answer, 1700000000))
    choice = out["choices"][0]
    if name == "tool_use":
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["tool_calls"][0]["function"] == {"name": "top_song", "arguments": '{"sign":"WZPZ"}'}
    if name == "guardrail":
        assert choice["finish_reason"] == "content_filter"
    if name == "reasoning_cached":
        # inputTokens excludes the cache reads and writes; OpenAI's prompt_tokens includes them, once each
        assert out["usage"]["prompt_tokens"] == 12 + 2000 + 48
        assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 2000
        assert answer.usage.cache_write_tokens == 48
        blocks = choice["message"]["thinking_blocks"]
        assert blocks[0]["signature"].startswith("ErcB") and blocks[1] == {
            "type": "redacted_thinking", "data": "RXJyb3IgcmVkYWN0ZWQgY29udGVudA=="}


def test_a_malformed_answer_is_an_upstream_failure() -> None:
    with pytest.raises(tr.MalformedAnswer) as info:
        tr.response_from_body((FIX / "responses" / "malformed_tool_use.json").read_bytes(), "x", "m")
    assert info.value.error.status == 502 and info.value.error.retryable


@pytest.mark.parametrize("stop, finish", [("end_turn", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
                                          ("stop_sequence", "stop"), ("guardrail_intervened", "content_filter"),
                                          ("content_filtered", "content_filter"),
                                          ("model_context_window_exceeded", "length")])
def test_stop_reason_table(stop: str, finish: str) -> None:
    assert oc.finish_reason(tr.stop_reason(stop)) == finish


@pytest.mark.parametrize("name, status, code, retryable", [
    ("throttling", 429, "rate_limit_exceeded", True),
    ("model_not_ready", 503, "upstream_model_not_ready", True),
    ("access_denied", 502, "upstream_permission", False),
    ("validation_too_long", 400, "context_length_exceeded", False),
    ("expired_token", 502, "upstream_authentication", False),
])
def test_error_table(name: str, status: int, code: str, retryable: bool) -> None:
    fx = json.loads((FIX / "errors" / f"{name}.json").read_text())
    body = json.dumps(fx["body"]).encode()
    for header in (fx["x-amzn-ErrorType"], None):  # with the header, and told by status and message
        err = tr.error_from_response(fx["status"], body, header)
        assert (err.status, err.code, err.retryable) == (status, code, retryable), header


def test_guardrail_setup_errors_are_the_operators() -> None:
    err = tr.error_from_response(400, b'{"message": "The guardrail identifier or version provided in the request '
                                      b'does not exist."}')
    assert (err.status, err.code) == (502, "upstream_guardrail")


def test_service_unavailable_is_retryable_503() -> None:
    err = tr.error_from_response(503, b'{"message": "Bedrock is unable to process your request."}')
    assert (err.status, err.type, err.retryable) == (503, "server_error", True)


# ---- streams ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_documented_streams_match_the_event_shapes(name: str) -> None:
    for line in stream_of(name):
        headers = line["headers"]
        member = headers.get(":event-type") or headers[":exception-type"]
        payload = {k: v for k, v in line["payload"].items() if k != "p"}  # AWS's padding field
        validate_shape(payload, STREAM_OUT.members[member])


@pytest.mark.parametrize("name", STREAMS)
def test_streams_give_the_same_events_whole_and_byte_by_byte(name: str) -> None:
    data = frame(stream_of(name))
    whole = replay(data)
    assert replay(data, list(range(1, len(data)))) == whole


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(STREAMS), data=st.data())
def test_streams_cut_at_random_boundaries(name: str, data: st.DataObject) -> None:
    raw = frame(stream_of(name))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=12)))
    assert replay(raw, cuts) == replay(raw)


def test_tool_stream_keeps_each_call_apart_and_usage_counts_cache_once() -> None:
    events = replay(frame(stream_of("tool_use")))
    enc = oc.ChunkEncoder(1700000000, include_usage=True)
    chunks = [json.loads(line[6:]) for line in enc.encode_all(events).decode().split("\n\n")
              if line.startswith("data: {")]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"] and
             c["choices"][0]["delta"].get("tool_calls")]
    starts = [c for c in calls if "id" in c]
    assert [(c["index"], c["id"]) for c in starts] == [(0, "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"),
                                                       (1, "tooluse_2ndCall_qRm8ZyXk")]
    args = {0: "", 1: ""}
    for c in calls:
        args[c["index"]] += c["function"].get("arguments") or ""
    assert args == {0: '{"sign": "WZPZ"}', 1: '{"sign": "WKRP"}'}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] == 375 and chunks[-1]["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 300}


def test_the_stop_waits_for_the_usage() -> None:
    events = replay(frame(stream_of("text")))
    assert isinstance(events[-2], ir.UsageUpdate) and isinstance(events[-1], ir.MessageStop)
    assert events[-2].usage.input_tokens == 12


def test_a_stream_ending_after_message_stop_still_stops() -> None:
    lines = stream_of("text")[:-1]  # no metadata
    events = replay(frame(lines))
    assert isinstance(events[-1], ir.MessageStop)


def test_reasoning_stream_keeps_the_signature() -> None:
    events = replay(frame(stream_of("reasoning")))
    sig = [e for e in events if isinstance(e, ir.BlockDelta) and e.kind == "signature"]
    assert sig and sig[0].value.startswith("ErcB")


def test_an_exception_message_is_a_retryable_stream_error() -> None:
    events = replay(frame(stream_of("throttled")))
    assert isinstance(events[-1], ir.StreamError)
    assert (events[-1].error.status, events[-1].error.retryable) == (429, True)


def test_a_cut_stream_fails() -> None:
    events = replay(frame(stream_of("text")[:3]))
    assert isinstance(events[-1], ir.StreamError) and events[-1].error.code == "bad_gateway"


def test_a_broken_checksum_fails_the_stream() -> None:
    data = bytearray(frame(stream_of("text")))
    data[20] ^= 0xFF  # inside the first message's headers: its message CRC no longer matches
    events = replay(bytes(data))
    assert len(events) == 1 and isinstance(events[0], ir.StreamError)


def test_mock_framing_is_what_botocore_parses() -> None:
    raw = event_message({":event-type": "messageStart", ":message-type": "event"}, b'{"role":"assistant"}')
    buf = EventStreamBuffer()
    buf.add_data(raw)
    (msg,) = list(buf)
    assert msg.headers[":event-type"] == "messageStart" and msg.payload == b'{"role":"assistant"}'
    total, head = struct.unpack("!II", raw[:8])
    assert total == len(raw) and struct.unpack("!I", raw[8:12])[0] == binascii.crc32(raw[:8])
    assert head == len(raw) - 16 - len(b'{"role":"assistant"}')


# ---- embeddings -------------------------------------------------------------------------------------


def test_titan_embeds_one_text_per_request() -> None:
    body = json.loads(tr.embedding_request("amazon.titan-embed-text-v2:0", ["hi"], 256))
    assert body == {"inputText": "hi", "normalize": True, "dimensions": 256}
    with pytest.raises(BadRequest):
        tr.embedding_request("amazon.titan-embed-text-v2:0", ["a", "b"], None)
    answer = tr.embeddings_from_body("amazon.titan-embed-text-v2:0",
                                     b'{"embedding": [0.1, 0.2], "inputTextTokenCount": 3}', ["hi"])
    assert answer.vectors == [[0.1, 0.2]] and answer.prompt_tokens == 3


def test_cohere_on_bedrock_embeddings() -> None:
    body = json.loads(tr.embedding_request("cohere.embed-english-v3", ["a", "b"], None))
    assert body == {"texts": ["a", "b"], "input_type": "search_document", "embedding_types": ["float"]}
    answer = tr.embeddings_from_body("cohere.embed-english-v3", msgspec.json.encode(
        {"id": "x", "embeddings": {"float": [[0.5], [0.25]]}, "texts": ["a", "b"],
         "response_type": "embeddings_by_type"}), ["aaaa", "bbbbbbbb"])
    assert answer.vectors == [[0.5], [0.25]] and answer.prompt_tokens == 3


# ---- the mock's answers against the service model ------------------------------------------------


def _mock() -> Any:
    from gateway.config.schema import MockConfig
    from gateway.providers.mock import MockLLM
    from gateway.providers.mock_bedrock import BedrockMock

    return BedrockMock(MockLLM(MockConfig()))


def _mock_body(**fields: Any) -> bytes:
    req = request(**fields)
    return tr.encode_request(req, MODEL)


@pytest.mark.parametrize("fields", [
    {},
    {"tools": [WEATHER], "tool_choice": "required"},
    {"reasoning_effort": "low"},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}},
])
def test_mock_answers_and_events_match_the_service_model(fields: dict[str, Any]) -> None:
    mock = _mock()
    body = _mock_body(**fields)
    validate_converse_request(body)
    answer = mock._converse(MODEL, body, None, stream=False)
    assert answer.status == 200
    validate_shape(json.loads(answer.parts[0]), CONVERSE_OUT)
    stream = mock._converse(MODEL, body, None, stream=True)
    buf = EventStreamBuffer()
    buf.add_data(b"".join(stream.parts))
    kinds = []
    for msg in buf:
        kind = msg.headers[":event-type"]
        kinds.append(kind)
        validate_shape(json.loads(msg.payload), STREAM_OUT.members[kind])
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    events = replay(b"".join(stream.parts))
    assert isinstance(events[-1], ir.MessageStop)


def test_mock_exception_event_matches_the_service_model() -> None:
    stream = _mock()._converse(MODEL, _mock_body(messages=[
        {"role": "user", "content": "!exception throttlingException"}]), None, stream=True)
    buf = EventStreamBuffer()
    buf.add_data(b"".join(stream.parts))
    msgs = list(buf)
    assert msgs[-1].headers[":message-type"] == "exception"
    validate_shape(json.loads(msgs[-1].payload), STREAM_OUT.members[msgs[-1].headers[":exception-type"]])
