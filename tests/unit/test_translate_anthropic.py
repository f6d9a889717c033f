"""IR ⇄ Anthropic Messages translation, checked against the official SDKs' own types.

Golden transcripts: every Anthropic stream in ``tests/fixtures/providers/anthropic/streams`` is translated
to OpenAI chunks and compared with the checked-in ``*.openai.sse``; every one is also replayed cut at
random byte boundaries (hypothesis) and must give the same bytes. Non-streamed answers and requests have
goldens too. Translated requests are validated with the ``anthropic`` SDK's ``MessageCreateParams``
types, translated answers and chunks with the ``openai`` SDK's ``ChatCompletion``/``ChatCompletionChunk``.

Each known pitfall has its own test: parallel tool calls keep their index; stream usage is cumulative;
cache tokens are counted once (OpenAI prompt_tokens includes them, Anthropic input_tokens does not);
thinking and its signatures (signature-only and redacted too) survive a multi-turn round trip; tool ids
are made valid and mapped back; tool_choice none stays none; a system message in mid-conversation is not
hoisted; stop reasons (max_tokens, refusal, context window) map right; 529 overloaded is retryable.

Set GATEWAY_REGEN_GOLDEN=1 to rewrite the golden files (then read the diff before committing it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anthropic.types as at
import msgspec
import pytest
from anthropic.types import message_create_params as mcp
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from gateway import ir
from gateway.dialects import openai_chat as oc
from gateway.errors import BadRequest
from gateway.providers import anthropic_translate as tr
from gateway.providers.schemas import anthropic as wire

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "providers" / "anthropic"
CREATED = 1700000000
STREAMS = sorted(p.stem for p in (FIX / "streams").glob("*.sse") if not p.name.endswith(".openai.sse"))
RESPONSES = sorted(p.stem for p in (FIX / "responses").glob("*.json") if not p.name.endswith(".openai.json"))
REQUESTS = sorted(p.name[: -len(".openai.json")] for p in (FIX / "requests").glob("*.openai.json"))
REGEN = os.environ.get("GATEWAY_REGEN_GOLDEN") == "1"


def _golden(path: Path, actual: bytes) -> bytes:
    if REGEN:
        path.write_bytes(actual)
    return path.read_bytes()


def _translate(data: bytes, cuts: list[int] | None = None, include_usage: bool = True) -> bytes:
    stream = tr.AnthropicStream()
    enc = oc.ChunkEncoder(CREATED, include_usage)
    out = b""
    start = 0
    for cut in [*(cuts or []), len(data)]:
        out += enc.encode_all(stream.feed(data[start:cut]))
        start = cut
    return out + enc.encode_all(stream.close())


def _chunks(sse: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of an OpenAI stream (not [DONE])."""
    out = []
    for event in sse.split(b"\n\n"):
        if event.startswith(b"data: ") and event != b"data: [DONE]":
            out.append(json.loads(event[6:]))
    return out


def _stream(name: str) -> bytes:
    return (FIX / "streams" / f"{name}.sse").read_bytes()


# ---- the fixtures are the SDK's shapes -----------------------------------------------------------

_raw_event = TypeAdapter(at.RawMessageStreamEvent)


@pytest.mark.parametrize("name", STREAMS)
def test_stream_fixtures_are_sdk_events(name: str) -> None:
    for event in _stream(name).split(b"\n\n"):
        data = next((line[6:] for line in event.split(b"\n") if line.startswith(b"data: ")), None)
        if data is None:
            continue
        obj = json.loads(data)
        if obj["type"] not in ("ping", "error"):
            _raw_event.validate_python(obj)


@pytest.mark.parametrize("name", RESPONSES)
def test_response_fixtures_are_sdk_messages(name: str) -> None:
    at.Message.model_validate_json((FIX / "responses" / f"{name}.json").read_bytes())


# ---- goldens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_stream_golden(name: str) -> None:
    actual = _translate(_stream(name))
    assert actual == _golden(FIX / "streams" / f"{name}.openai.sse", actual)
    for chunk in _chunks(actual):
        if "error" not in chunk:
            ChatCompletionChunk.model_validate(chunk)


@pytest.mark.parametrize("name", STREAMS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_stream_refragmented(name: str, data: st.DataObject) -> None:
    raw = _stream(name)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=40)))
    assert _translate(raw, cuts) == _translate(raw)


@pytest.mark.parametrize("name", STREAMS)
def test_stream_byte_by_byte(name: str) -> None:
    raw = _stream(name)
    assert _translate(raw, list(range(1, len(raw)))) == _translate(raw)


@pytest.mark.parametrize("name", RESPONSES)
def test_response_golden(name: str) -> None:
    resp = tr.response_from_body((FIX / "responses" / f"{name}.json").read_bytes())
    actual = oc.encode_response(resp, CREATED)
    pretty = json.dumps(json.loads(actual), indent=2).encode() + b"\n"
    assert pretty == _golden(FIX / "responses" / f"{name}.openai.json", pretty)
    ChatCompletion.model_validate_json(actual)


_create_nonstream = TypeAdapter(mcp.MessageCreateParamsNonStreaming)
_create_stream = TypeAdapter(mcp.MessageCreateParamsStreaming)
_PARAM_KEYS = mcp.MessageCreateParamsStreaming.__required_keys__ | mcp.MessageCreateParamsStreaming.__optional_keys__


def _force(obj: Any) -> Any:
    """Run pydantic's lazy ``Iterable`` validators to the bottom."""
    if isinstance(obj, dict):
        return {k: _force(v) for k, v in obj.items()}
    if isinstance(obj, str | bytes | int | float | bool) or obj is None:
        return obj
    return [_force(v) for v in obj]


#: accepted under ``anthropic-version: 2023-06-01`` by the models that still take them; the SDK's current
#: request types no longer list them (see ``sampling=False`` in the translator)
_SAMPLING = {"temperature", "top_p", "top_k"}


def assert_sdk_request(body: bytes) -> dict[str, Any]:
    """Validate an encoded request with the anthropic SDK's request types."""
    obj = json.loads(body)
    assert set(obj) <= _PARAM_KEYS | _SAMPLING
    adapter = _create_stream if obj.get("stream") else _create_nonstream
    _force(adapter.validate_python({k: v for k, v in obj.items() if k not in _SAMPLING}))
    return dict(obj)


@pytest.mark.parametrize("name", REQUESTS)
def test_request_golden(name: str) -> None:
    req = oc.decode_request((FIX / "requests" / f"{name}.openai.json").read_bytes())
    body = tr.encode_request(req, "claude-sonnet-4-5-20250929")
    assert_sdk_request(body)
    pretty = json.dumps(json.loads(body), indent=2).encode() + b"\n"
    assert pretty == _golden(FIX / "requests" / f"{name}.anthropic.json", pretty)


# ---- pitfalls ------------------------------------------------------------------------------------


def test_crlf_framing_gives_the_same_output() -> None:
    raw = _stream("tool_use")
    assert _translate(raw.replace(b"\n", b"\r\n")) == _translate(raw)


def test_parallel_tool_calls_keep_their_index() -> None:
    """Two tool blocks whose fragments interleave: each fragment lands on its own call's index."""
    chunks = _chunks(_translate(_stream("parallel_tools_cached")))
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for choice in c["choices"]:
            for tc in choice["delta"].get("tool_calls", []):
                call = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.get("id") or ""
                call["name"] += tc.get("function", {}).get("name") or ""
                call["arguments"] += tc.get("function", {}).get("arguments") or ""
    assert calls == {
        0: {"id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "arguments": '{"location": "San Francisco, CA"}'},
        1: {"id": "toolu_01B77fGh4kLmN0pQ2rS3tU4", "name": "get_time", "arguments": '{"timezone": "America/New_York"}'},
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_usage_is_cumulative_not_summed() -> None:
    """message_delta usage is a running total: 40 then 89 output tokens is 89, not 129."""
    stream = tr.AnthropicStream()
    events = stream.feed(_stream("parallel_tools_cached")) + stream.close()
    updates = [e.usage.output_tokens for e in events if isinstance(e, ir.UsageUpdate)]
    assert updates == [40, 89]
    assert stream.usage.output_tokens == 89
    usage = _chunks(_translate(_stream("parallel_tools_cached")))[-1]["usage"]
    assert usage["completion_tokens"] == 89


def test_message_start_carries_the_input_tokens() -> None:
    """A message_delta that reports only output tokens keeps message_start's input and cache figures."""
    stream = tr.AnthropicStream()
    stream.feed(_stream("tool_use"))
    assert stream.usage == ir.Usage(input_tokens=377, output_tokens=65)


def test_cache_tokens_counted_once() -> None:
    """Anthropic input_tokens excludes cache reads and writes; OpenAI prompt_tokens includes both."""
    stream = tr.AnthropicStream()
    stream.feed(_stream("parallel_tools_cached"))
    u = stream.usage
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens) == (25, 3400, 1200)
    assert u.prompt_tokens == 25 + 3400 + 1200
    usage = _chunks(_translate(_stream("parallel_tools_cached")))[-1]["usage"]
    assert usage["prompt_tokens"] == 4625
    assert usage["prompt_tokens_details"]["cached_tokens"] == 3400
    assert usage["total_tokens"] == 4625 + 89
    resp = tr.response_from_body((FIX / "responses" / "thinking_cached.json").read_bytes())
    assert resp.usage == ir.Usage(50, 300, 2000, 1000, 180)
    body = json.loads(oc.encode_response(resp, CREATED))
    assert body["usage"]["prompt_tokens"] == 3050
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 2000
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 180


def _assistant_turn(body: bytes) -> list[dict[str, Any]]:
    obj = assert_sdk_request(body)
    return next(m for m in obj["messages"] if m["role"] == "assistant")["content"]  # type: ignore[no-any-return]


def _next_turn(assistant: dict[str, Any]) -> bytes:
    req = {
        "model": "m",
        "messages": [{"role": "user", "content": "Is 2^61-1 prime?"}, assistant, {"role": "user", "content": "And?"}],
    }
    return tr.encode_request(oc.decode_request(json.dumps(req).encode()), "claude-x")


def test_thinking_round_trip_non_stream() -> None:
    """Thinking, its signature and redacted thinking come back to Anthropic unchanged on the next turn."""
    raw = json.loads((FIX / "responses" / "thinking_cached.json").read_bytes())
    resp = tr.response_from_body(json.dumps(raw).encode())
    assistant = json.loads(oc.encode_response(resp, CREATED))["choices"][0]["message"]
    sent = _assistant_turn(_next_turn(assistant))
    assert sent[:2] == raw["content"][:2]
    assert sent[2] == {"type": "text", "text": raw["content"][2]["text"]}


def test_thinking_round_trip_stream_with_signature_only_block() -> None:
    """A client that assembles the streamed thinking (text, signature, redacted) sends back the same blocks."""
    sse = _translate(_stream("thinking"))
    reasoning, blocks, content = "", [], ""
    for c in _chunks(sse):
        for choice in c["choices"]:
            d = choice["delta"]
            reasoning += d.get("reasoning_content") or ""
            content += d.get("content") or ""
            blocks += d.get("thinking_blocks") or []
    assert blocks[0]["signature"].startswith("EqQBCgIYAhIM")
    # the client fills the streamed thinking text into its signed block, as it would assemble it
    blocks[0] = {**blocks[0], "thinking": reasoning}
    sent = _assistant_turn(_next_turn({"role": "assistant", "content": content, "thinking_blocks": blocks}))
    assert sent[0] == {
        "type": "thinking",
        "thinking": "Let me solve this step by step:\n\n1. First break down 27 * 453\n2. 453 = 400 + 50 + 3",
        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...",
    }
    assert sent[1]["type"] == "redacted_thinking"
    # a signature-only block (thinking omitted by the provider) survives as it is
    only_sig = {"type": "thinking", "thinking": "", "signature": "ErcBCkgIBRABGAIiQGV1c2ln"}
    sent = _assistant_turn(_next_turn({"role": "assistant", "content": "x", "thinking_blocks": [only_sig]}))
    assert sent[0] == only_sig


def test_signature_only_block_in_an_answer() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "thinking", "thinking": "", "signature": "Sig0nly=="}, {"type": "text", "text": "42"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    at.Message.model_validate(body)
    out = json.loads(oc.encode_response(tr.response_from_body(json.dumps(body).encode()), CREATED))
    msg = out["choices"][0]["message"]
    assert msg["thinking_blocks"] == [{"type": "thinking", "thinking": "", "signature": "Sig0nly=="}]
    assert _assistant_turn(_next_turn({"role": "assistant", **msg}))[0] == body["content"][0]


def test_unsigned_reasoning_is_not_sent_to_anthropic() -> None:
    req = oc.decode_request(
        json.dumps(
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello", "reasoning_content": "other provider's thoughts"},
                    {"role": "user", "content": "?"},
                ],
            }
        ).encode()
    )
    assert _assistant_turn(tr.encode_request(req, "c")) == [{"type": "text", "text": "hello"}]


@given(st.text(min_size=1, max_size=80))
def test_tool_id_sanitising_is_valid_and_reversible(tool_id: str) -> None:
    safe = tr.sanitize_tool_id(tool_id)
    assert tr._VALID_ID.fullmatch(safe)
    assert tr.restore_tool_id(safe) == tool_id


def test_tool_ids_valid_ones_unchanged_invalid_ones_mapped_back() -> None:
    assert tr.sanitize_tool_id("call_Qx7Lk2") == "call_Qx7Lk2"
    assert tr.sanitize_tool_id("toolu_01A09q90qw90lq917835lq9") == "toolu_01A09q90qw90lq917835lq9"
    # an id that looks like an escaped one is escaped too, so restoring is never ambiguous
    assert tr.restore_tool_id(tr.sanitize_tool_id("gwx_abc")) == "gwx_abc"
    body = assert_sdk_request(
        tr.encode_request(oc.decode_request((FIX / "requests" / "tools_vision.openai.json").read_bytes()), "c")
    )
    use_ids = [b["id"] for m in body["messages"] for b in m["content"] if b["type"] == "tool_use"]
    result_ids = [b["tool_use_id"] for m in body["messages"] for b in m["content"] if b["type"] == "tool_result"]
    assert use_ids == result_ids
    assert use_ids[1] == "call_Qx7Lk2"
    assert tr.restore_tool_id(use_ids[0]) == "functions.get_weather:0"
    # an id the gateway escaped comes back to the client as the original
    escaped = tr.sanitize_tool_id("functions.get_weather:0")
    answer = {
        "id": "msg_2",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "tool_use", "id": escaped, "name": "get_weather", "input": {"location": "Paris"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    out = json.loads(oc.encode_response(tr.response_from_body(json.dumps(answer).encode()), CREATED))
    assert out["choices"][0]["message"]["tool_calls"][0]["id"] == "functions.get_weather:0"
    assert out["choices"][0]["message"]["content"] is None


def _request(**fields: Any) -> ir.Request:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return oc.decode_request(json.dumps(body).encode())


_TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


def test_tool_choice_none_stays_none() -> None:
    body = assert_sdk_request(tr.encode_request(_request(tools=_TOOLS, tool_choice="none"), "c"))
    assert body["tool_choice"] == {"type": "none"}
    assert body["tools"][0]["name"] == "f"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice_table(choice: Any, expected: dict[str, Any]) -> None:
    body = assert_sdk_request(tr.encode_request(_request(tools=_TOOLS, tool_choice=choice), "c"))
    assert body["tool_choice"] == expected
    body = assert_sdk_request(
        tr.encode_request(_request(tools=_TOOLS, tool_choice=choice, parallel_tool_calls=False), "c")
    )
    assert body["tool_choice"] == {**expected, "disable_parallel_tool_use": True}


def test_forced_tool_turns_thinking_off() -> None:
    body = assert_sdk_request(
        tr.encode_request(_request(tools=_TOOLS, tool_choice="required", reasoning_effort="high"), "c")
    )
    assert "thinking" not in body
    body = assert_sdk_request(tr.encode_request(_request(tools=_TOOLS, reasoning_effort="high"), "c"))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert body["max_tokens"] == tr.DEFAULT_MAX_TOKENS + 16384


def test_mid_conversation_system_message_is_not_hoisted() -> None:
    req = oc.decode_request(
        json.dumps(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "system", "content": "Now answer in French."},
                    {"role": "user", "content": "How are you?"},
                ],
            }
        ).encode()
    )
    body = assert_sdk_request(tr.encode_request(req, "c"))
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert body["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system>\nNow answer in French.\n</system>"},
            {"type": "text", "text": "How are you?"},
        ],
    }
    assert "French" not in json.dumps(body["system"])


def _answer(stop_reason: str, content: list[dict[str, Any]] | None = None) -> bytes:
    body = {
        "id": "msg_3",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "partial"}] if content is None else content,
        "stop_reason": stop_reason,
        "stop_sequence": "END" if stop_reason == "stop_sequence" else None,
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    at.Message.model_validate(body)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "length"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reasons(reason: str, finish: str) -> None:
    resp = tr.response_from_body(_answer(reason))
    assert resp.stop_reason is tr.STOP_REASONS[reason]
    body = oc.encode_response(resp, CREATED)
    assert ChatCompletion.model_validate_json(body).choices[0].finish_reason == finish


def test_every_sdk_stop_reason_is_mapped() -> None:
    assert set(tr.STOP_REASONS) == set(at.StopReason.__args__)  # type: ignore[attr-defined]
    assert set(oc.FINISH_REASONS) == set(ir.StopReason)


def test_context_window_with_no_output_is_an_error() -> None:
    resp = tr.response_from_body(_answer("model_context_window_exceeded", content=[]))
    with pytest.raises(BadRequest) as e:
        oc.encode_response(resp, CREATED)
    assert e.value.code == "context_length_exceeded"


def test_stream_stop_reasons_max_tokens_and_refusal() -> None:
    assert _chunks(_translate(_stream("max_tokens")))[-2]["choices"][0]["finish_reason"] == "length"
    refusal = _chunks(_translate(_stream("refusal")))
    assert refusal[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert refusal[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 67


def test_overloaded_529_is_retryable() -> None:
    err = tr.error_from_response(529, (FIX / "errors" / "overloaded_529.json").read_bytes())
    assert (err.status, err.type, err.code, err.retryable, err.provider_type) == (
        503,
        "server_error",
        "upstream_overloaded",
        True,
        "overloaded_error",
    )
    body = json.loads(oc.encode_error(err))
    assert body == {"error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "upstream_overloaded"}}


@pytest.mark.parametrize(
    ("status", "kind", "expected", "retryable"),
    [
        (400, "invalid_request_error", 400, False),
        (401, "authentication_error", 502, False),
        (403, "permission_error", 502, False),
        (404, "not_found_error", 502, False),
        (413, "request_too_large", 413, False),
        (429, "rate_limit_error", 429, True),
        (500, "api_error", 502, True),
        (504, "timeout_error", 504, True),
    ],
)
def test_error_table(status: int, kind: str, expected: int, retryable: bool) -> None:
    err = tr.error_from_response(status, json.dumps({"type": "error", "error": {"type": kind, "message": "m"}}).encode())
    assert (err.status, err.retryable) == (expected, retryable)


def test_error_that_is_not_anthropic_json() -> None:
    err = tr.error_from_response(529, b"<html>overloaded</html>")
    assert err.retryable and err.status == 503
    err = tr.error_from_response(400, b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}')
    assert err.code == "context_length_exceeded"


def test_error_mid_stream() -> None:
    out = _translate(_stream("overloaded_midstream"))
    chunks = _chunks(out)
    assert chunks[-1] == {"error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "upstream_overloaded"}}
    assert out.endswith(b"\n\ndata: [DONE]\n\n")  # the error, then the stream's regular end
    stream = tr.AnthropicStream()
    events = stream.feed(_stream("overloaded_midstream"))
    assert isinstance(events[-1], ir.StreamError) and events[-1].error.retryable
    assert stream.close() == []


def test_truncated_stream_fails() -> None:
    raw = _stream("basic_text")
    cut = raw.index(b"event: message_delta")
    stream = tr.AnthropicStream()
    events = stream.feed(raw[:cut]) + stream.close()
    assert isinstance(events[-1], ir.StreamError)
    assert events[-1].error.status == 502


def test_unknown_events_and_blocks_are_skipped() -> None:
    raw = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant",'
        b'"content":[],"model":"c","usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
        b'event: future_event\ndata: {"type":"future_event","x":1}\n\n'
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}\n\n'
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n'
        b'data: {"type":"content_block_stop","index":0}\n\n'
        b'data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":"ok"}}\n\n'
        b'data: {"type":"content_block_delta","index":1,"delta":{"type":"future_delta","x":1}}\n\n'
        b'data: {"type":"content_block_delta","index":1,"delta":{"type":"citations_delta","citation":{"type":"char_location","cited_text":"x","document_index":0,"document_title":null,"start_char_index":0,"end_char_index":1}}}\n\n'
        b'data: {"type":"content_block_stop","index":1}\n\n'
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}\n\n'
        b'data: {"type":"message_stop"}\n\n'
    )
    chunks = _chunks(_translate(raw))
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]] == ["ok"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "bad",
    [
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n',
        b'data: {"type":"message_start","message":{"id":"m"}}\n\n',
        b"data: not json\n\n",
    ],
)
def test_protocol_violations_fail_the_stream(bad: bytes) -> None:
    stream = tr.AnthropicStream()
    events = stream.feed(bad)
    assert len(events) == 1 and isinstance(events[0], ir.StreamError)
    assert stream.feed(_stream("basic_text")) == []


def test_event_size_limit() -> None:
    stream = tr.AnthropicStream(max_event_bytes=64)
    events = stream.feed(b"data: " + b"x" * 100)
    assert isinstance(events[0], ir.StreamError)


# ---- request details -----------------------------------------------------------------------------


def test_max_tokens_default_and_thinking_share() -> None:
    assert assert_sdk_request(tr.encode_request(_request(), "c"))["max_tokens"] == 4096
    assert assert_sdk_request(tr.encode_request(_request(), "c", default_max_tokens=1000))["max_tokens"] == 1000
    body = assert_sdk_request(tr.encode_request(_request(max_tokens=3000, reasoning_effort="high"), "c"))
    assert (body["max_tokens"], body["thinking"]["budget_tokens"]) == (3000, 1500)
    body = assert_sdk_request(tr.encode_request(_request(max_tokens=1500, reasoning_effort="high"), "c"))
    assert "thinking" not in body
    body = assert_sdk_request(tr.encode_request(_request(thinking={"type": "enabled", "budget_tokens": 5000}), "c"))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 5000}
    assert "thinking" not in assert_sdk_request(tr.encode_request(_request(reasoning_effort="none"), "c"))
    with pytest.raises(BadRequest):
        tr.encode_request(_request(reasoning_effort="extreme"), "c")


def test_sampling_and_stop() -> None:
    body = assert_sdk_request(
        tr.encode_request(_request(temperature=1.7, top_p=0.5, top_k=40, stop="END", seed=3, user="u1"), "c")
    )
    assert (body["temperature"], body["top_p"], body["top_k"]) == (1.0, 0.5, 40)
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u1"}
    assert "seed" not in body
    body = assert_sdk_request(tr.encode_request(_request(temperature=0.2, top_p=0.5, top_k=40), "c", sampling=False))
    assert not _SAMPLING & set(body)
    with pytest.raises(BadRequest):
        tr.encode_request(_request(n=2), "c")


def test_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    body = assert_sdk_request(tr.encode_request(_request(response_format=rf), "c"))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    body = assert_sdk_request(tr.encode_request(_request(response_format={"type": "json_object"}), "c"))
    assert "output_config" not in body and "JSON object" in body["system"][-1]["text"]


def test_structured_output_schema_is_fitted_to_anthropic() -> None:
    """Open objects are closed, oneOf becomes anyOf, unenforceable keywords move into the description."""
    schema = {
        "title": "Person",
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "email": {"type": "string", "format": "email", "maxLength": 80},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3},
            "pet": {"oneOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}]},
        },
        "required": ["age"],
        "$defs": {"Pet": {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": True}},
    }
    rf = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    body = assert_sdk_request(tr.encode_request(_request(response_format=rf), "c"))
    assert body["output_config"]["format"]["schema"] == {
        "title": "Person",
        "$defs": {"Pet": {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": False}},
        "type": "object",
        "properties": {
            "age": {"type": "integer", "description": "{minimum: 0, maximum: 150}"},
            "email": {"type": "string", "format": "email", "description": "{maxLength: 80}"},
            "tags": {"type": "array", "items": {"type": "string"}, "description": "{minItems: 3}"},
            "pet": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}]},
        },
        "required": ["age"],
        "additionalProperties": False,
    }
    strict_tool = {"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 0}}}}}
    loose_tool = {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 0}}}}}
    tools = assert_sdk_request(tr.encode_request(_request(tools=[strict_tool, loose_tool]), "c"))["tools"]
    assert tools[0]["input_schema"] == {
        "type": "object",
        "properties": {"n": {"type": "number", "description": "{exclusiveMinimum: 0}"}},
        "additionalProperties": False,
    }
    assert tools[0]["strict"] is True
    assert tools[1]["input_schema"] == loose_tool["function"]["parameters"]  # type: ignore[index]


def test_images_and_documents() -> None:
    content = [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "a.pdf"}},
    ]
    body = assert_sdk_request(tr.encode_request(_request(messages=[{"role": "user", "content": content}]), "c"))
    blocks = body["messages"][0]["content"]
    assert blocks[0] == {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}
    assert blocks[2] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
        "title": "a.pdf",
    }


def test_bad_tool_arguments_are_a_400() -> None:
    msgs = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
    ]
    with pytest.raises(BadRequest):
        tr.encode_request(_request(messages=msgs), "c")


def test_ratelimit_headers() -> None:
    now = 1_700_000_000.0
    headers = [
        ("anthropic-ratelimit-requests-limit", "4000"),
        ("anthropic-ratelimit-requests-remaining", "3999"),
        ("anthropic-ratelimit-requests-reset", "2023-11-14T22:14:50Z"),
        ("Anthropic-RateLimit-Tokens-Limit", "400000"),
        ("anthropic-ratelimit-tokens-remaining", "399000"),
        ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:15:30Z"),
        ("anthropic-ratelimit-input-tokens-limit", "300000"),
        ("content-type", "application/json"),
    ]
    assert tr.ratelimit_headers(headers, now) == [
        ("x-ratelimit-limit-requests", "4000"),
        ("x-ratelimit-remaining-requests", "3999"),
        ("x-ratelimit-reset-requests", "1m30s"),  # now is 22:13:20Z
        ("x-ratelimit-limit-tokens", "400000"),
        ("x-ratelimit-remaining-tokens", "399000"),
        ("x-ratelimit-reset-tokens", "2m10s"),
    ]
    only_input = [("anthropic-ratelimit-input-tokens-remaining", "5"), ("anthropic-ratelimit-tokens-reset", "bad")]
    assert tr.ratelimit_headers(only_input, now) == [("x-ratelimit-remaining-tokens", "5")]
    assert tr._duration(0.25) == "250ms" and tr._duration(7205) == "2h0m5s"


def test_wire_schema_round_trips_sdk_request_example() -> None:
    """The wire Request encodes what the SDK's TypedDicts describe (a minimal body)."""
    req = wire.Request(model="claude-x", messages=[wire.MessageParam("user", [wire.TextBlock("Hello")])], max_tokens=10)
    assert assert_sdk_request(wire.encode(req)) == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "max_tokens": 10,
    }


@pytest.mark.parametrize("usage", [
    {}, {"input_tokens": 12, "output_tokens": 7},
    {"input_tokens": 3, "output_tokens": 40, "cache_read_input_tokens": 600, "cache_creation_input_tokens": 25},
    {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": None, "cache_creation_input_tokens": 9},
    {"input_tokens": 5, "output_tokens": 9, "output_tokens_details": {"thinking_tokens": 4}},
])
def test_the_pass_through_usage_is_the_translated_usage(usage: dict[str, Any]) -> None:
    """What a Messages client's pass-through answer counts (``_usage_of``, compiled) is what the translated
    path counts for the same usage: OpenAI's terms, each prompt token once, the cache reads apart."""
    from gateway.providers.anthropic import _usage_of
    from gateway.providers.bridge import openai_usage
    from gateway.providers.schemas import anthropic as wire_schema

    u = msgspec.convert(usage, wire_schema.Usage)
    assert _usage_of(u) == openai_usage(tr.usage_from_wire(u))
