"""The Anthropic Messages dialect and the OpenAI wire's reverse codecs, checked against the SDKs' types."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import anthropic.types
import msgspec
import pydantic
import pytest

from gateway import ir
from gateway.config import load_config
from gateway.dialects import DIALECT_PATHS
from gateway.dialects import anthropic_messages as am
from gateway.dialects.endpoints import IMAGE_TOKENS, _texts
from gateway.errors import BadRequest, RateLimited
from gateway.providers import openai_translate as oai

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_event_adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


def _body(**fields: Any) -> bytes:
    base: dict[str, Any] = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({**base, **fields}).encode()


# -- request → IR ------------------------------------------------------------------------------------


def test_system_string_and_blocks() -> None:
    req = am.decode_request(_body(system="Be brief."))
    assert req.messages[0] == ir.Message("system", [ir.TextPart("Be brief.")])
    cc = {"type": "ephemeral"}
    req = am.decode_request(_body(system=[{"type": "text", "text": "a", "cache_control": cc},
                                          {"type": "text", "text": "b"}]))
    assert req.messages[0].content == [ir.TextPart("a", cache_control=cc), ir.TextPart("b")]


def test_tool_results_become_tool_messages_and_tool_use_keeps_its_input() -> None:
    req = am.decode_request(_body(messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "Rain"}],
             "is_error": True},
            {"type": "text", "text": "and now?"},
        ]},
    ], tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 2048}, stop_sequences=["END"],
        metadata={"user_id": "u1"}))
    roles = [m.role for m in req.messages]
    assert roles == ["user", "assistant", "tool", "tool", "user"]
    assert req.messages[1].content == [ir.ThinkingPart("hmm", "sig"),
                                       ir.ToolCallPart("toolu_1", "get_weather", '{"city":"Paris"}')]
    assert req.messages[2].content == [ir.ToolResultPart("toolu_1", [ir.TextPart("Sunny")])]
    assert req.messages[3].content == [ir.ToolResultPart("toolu_2", [ir.TextPart("Rain")], is_error=True)]
    assert req.tool_choice == ir.ToolChoice("required") and req.parallel_tool_calls is False
    assert req.reasoning == ir.Reasoning(budget_tokens=2048)
    assert req.stop == ["END"] and req.user == "u1" and req.max_tokens == 100


@pytest.mark.parametrize(("body", "param"), [
    (json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode(), "max_tokens"),
    (_body(messages=[]), "messages"),
    (_body(messages=[{"role": "system", "content": "x"}]), "messages"),
    (_body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools"),
    (_body(tool_choice={"type": "tool"}), "tool_choice"),
    (b"{nope", "body"),
])
def test_bad_requests_name_the_field(body: bytes, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        am.decode_request(body)
    assert info.value.param == param


# -- IR → answer, stream -----------------------------------------------------------------------------


def test_response_is_an_sdk_message() -> None:
    resp = ir.Response("msg_1", "m", [
        ir.ThinkingPart("think", "sig"), ir.TextPart("hello"),
        ir.ToolCallPart("call_1", "f", '{"a": 1}'),
    ], ir.StopReason.TOOL_USE, usage=ir.Usage(10, 5, cache_read_tokens=3, cache_write_tokens=2))
    msg = anthropic.types.Message.model_validate_json(am.encode_response(resp))
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert msg.content[2].input == {"a": 1}  # type: ignore[union-attr]
    assert msg.stop_reason == "tool_use"
    assert msg.usage.input_tokens == 10 and msg.usage.cache_read_input_tokens == 3


def _events(data: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in data.split(b"\n\n"):
        if not frame:
            continue
        name, payload = frame.split(b"\n")
        event = json.loads(payload[len(b"data: "):])
        assert name == b"event: " + event["type"].encode()
        if event["type"] not in ("ping", "error"):
            _event_adapter.validate_python(event)
        out.append(event)
    return out


def test_event_encoder_renumbers_blocks_and_closes_open_ones() -> None:
    enc = am.EventEncoder("rid")
    events: list[ir.StreamEvent] = [
        ir.MessageStart("msg_1", "m", ir.Usage(7)),
        ir.BlockStart(3, "text"), ir.BlockDelta(3, "text", "Hi"), ir.BlockStop(3),
        ir.BlockStart(5, "tool_call", "call_a", "f"), ir.BlockStart(6, "tool_call", "call_b", "g"),
        ir.BlockDelta(6, "arguments", '{"x"'), ir.BlockDelta(5, "arguments", "{}"),
        ir.BlockDelta(6, "arguments", ": 1}"),
        ir.UsageUpdate(ir.Usage(7, 9)), ir.MessageStop(ir.StopReason.TOOL_USE),
    ]
    out = _events(b"".join(enc.encode(e) for e in events))
    kinds = [e["type"] for e in out]
    assert kinds == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_start", "content_block_delta",
                     "content_block_delta", "content_block_delta", "content_block_stop", "content_block_stop",
                     "message_delta", "message_stop"]
    assert [e["index"] for e in out if e["type"] == "content_block_start"] == [0, 1, 2]
    assert out[7]["index"] == 2 and out[8]["index"] == 1
    delta = out[-2]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 9
    assert enc.done and enc.encode(ir.BlockStart(9, "text")) == b""


def test_stream_error_event_and_error_bodies() -> None:
    enc = am.EventEncoder("rid")
    enc.encode(ir.MessageStart("m1", "m"))
    err = ir.ProviderError(503, "server_error", "upstream_overloaded", "busy", True, "overloaded_error")
    (event,) = _events(enc.encode(ir.StreamError(err)))
    assert event == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    body = json.loads(am.ANTHROPIC_MESSAGES.error_body(RateLimited("slow down"), "rid-1"))
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"},
                    "request_id": "rid-1"}
    anthropic.types.ErrorResponse.model_validate(body)


def test_the_gateway_s_own_statuses_get_anthropic_error_types() -> None:
    from gateway.routing.router import NoDeploymentAvailable

    unavailable = NoDeploymentAvailable("m", [], 0.0)
    assert json.loads(am.ANTHROPIC_MESSAGES.error_body(unavailable, "r"))["error"]["type"] == "overloaded_error"
    assert [am.error_type(s) for s in (400, 401, 403, 404, 405, 413, 429, 500, 502, 503, 504, 529, 418, 599)] == [
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
        "invalid_request_error", "request_too_large", "rate_limit_error", "api_error", "api_error",
        "overloaded_error", "timeout_error", "overloaded_error", "invalid_request_error", "api_error"]


def test_response_headers_map_rate_limits_and_the_request_id() -> None:
    headers = [("x-request-id", "r1"), ("x-ratelimit-limit-requests", "10"),
               ("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "1m30s"),
               ("retry-after", "90")]
    out = dict(am.ANTHROPIC_MESSAGES.response_headers(headers, 0.0))
    assert out["request-id"] == "r1" and out["retry-after"] == "90"
    assert out["anthropic-ratelimit-requests-limit"] == "10"
    assert out["anthropic-ratelimit-requests-remaining"] == "0"
    assert out["anthropic-ratelimit-requests-reset"] == "1970-01-01T00:01:30Z"
    assert "x-ratelimit-limit-requests" not in out


# -- the OpenAI wire's reverse codecs ----------------------------------------------------------------

CHUNKS = [
    {"id": "c1", "model": "up", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c1", "model": "up", "choices": [{"index": 0, "delta": {"reasoning_content": "let me see"}}]},
    {"id": "c1", "model": "up", "choices": [{"index": 0, "delta": {"content": "Checking "}}]},
    {"id": "c1", "model": "up", "choices": [{"index": 0, "delta": {"content": "both."}}]},
    {"id": "c1", "model": "up", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]},
    {"id": "c1", "model": "up", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{\"y\""}}]}}]},
    {"id": "c1", "model": "up", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "{\"x\": 1}"}}]}}]},
    {"id": "c1", "model": "up", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "function": {"arguments": ": 2}"}}]}}]},
    {"id": "c1", "model": "up", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"id": "c1", "model": "up", "choices": [], "usage": {
        "prompt_tokens": 20, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 8},
        "completion_tokens_details": {"reasoning_tokens": 3}}},
]
STREAM = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in CHUNKS) + b"data: [DONE]\n\n"


def _replay(data: bytes, cuts: list[int]) -> list[ir.StreamEvent]:
    machine = oai.ChunkStream()
    out: list[ir.StreamEvent] = []
    start = 0
    for cut in [*cuts, len(data)]:
        out += machine.feed(data[start:cut])
        start = cut
    return out + machine.close()


def test_chunk_stream_to_ir_whole_and_refragmented() -> None:
    whole = _replay(STREAM, [])
    kinds = [(type(e).__name__, getattr(e, "index", None)) for e in whole]
    assert kinds[:4] == [("MessageStart", None), ("BlockStart", 0), ("BlockDelta", 0), ("BlockStop", 0)]
    starts = [e for e in whole if isinstance(e, ir.BlockStart)]
    assert [(s.kind, s.id) for s in starts] == [("thinking", None), ("text", None), ("tool_call", "call_a"),
                                                ("tool_call", "call_b")]
    args = {i: "".join(e.value for e in whole if isinstance(e, ir.BlockDelta) and e.index == i) for i in (2, 3)}
    assert args == {2: '{"x": 1}', 3: '{"y": 2}'}
    assert whole[-1] == ir.MessageStop(ir.StopReason.TOOL_USE)
    assert whole[-2] == ir.UsageUpdate(ir.Usage(12, 9, cache_read_tokens=8, reasoning_tokens=3))
    rng = random.Random(15)
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 30)))
        assert _replay(STREAM, cuts) == whole
    assert _replay(STREAM, list(range(1, len(STREAM)))) == whole


def test_chunk_stream_failures() -> None:
    cut = _replay(STREAM[: STREAM.index(b"finish_reason") - 40], [])
    assert isinstance(cut[-1], ir.StreamError) and cut[-1].error.status == 502
    err = _replay(b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n', [])
    assert err == [ir.StreamError(ir.ProviderError(502, "server_error", "upstream_error", "boom", True,
                                                   "server_error"))]
    assert isinstance(_replay(b"data: {not json}\n\n", [])[-1], ir.StreamError)


def test_completion_and_errors_to_ir() -> None:
    body = json.dumps({"id": "c1", "model": "up", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "ok", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}})
    resp = oai.response_from_body(body.encode())
    assert resp.content == [ir.TextPart("ok"), ir.ToolCallPart("call_1", "f", "{}")]
    assert resp.stop_reason is ir.StopReason.TOOL_USE and resp.usage == ir.Usage(6, 2, cache_read_tokens=4)
    err = oai.error_from_response(429, b'{"error": {"message": "slow", "type": "rate_limit_error"}}')
    assert err is not None and err.status == 429 and err.retryable
    assert oai.error_from_response(500, b"<html>") is None


def test_ir_request_as_openai_chat() -> None:
    req = am.decode_request(_body(system="sys", messages=[
        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                   "data": "AAA"}},
                                     {"type": "text", "text": "look"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}]},
    ], tools=[{"name": "f", "input_schema": {"type": "object"}}], tool_choice={"type": "tool", "name": "f"},
        stream=True, thinking={"type": "enabled", "budget_tokens": 20000}))
    out = oai.build_request(req, "up-model")
    assert out["model"] == "up-model" and out["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "tool"]
    assert out["messages"][1]["content"][0]["image_url"]["url"] == "data:image/png;base64,AAA"
    assert out["messages"][2]["tool_calls"][0]["id"] == "t1" and out["messages"][2]["content"] is None
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "done"}
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert out["reasoning_effort"] == "high" and out["max_completion_tokens"] == 100
    msgspec.json.decode(oai.encode_request(req, "up-model"))


# -- count_tokens' local estimate, the example, the registry -----------------------------------------


def test_local_estimate_counts_every_part() -> None:
    req = am.decode_count_request(json.dumps({"model": "m", "system": "sys", "tools": [
        {"name": "f", "description": "d", "input_schema": {"type": "object"}}], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hello"},
                                     {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}
    ).encode())
    texts, extra = _texts(req)
    assert "sys" in texts and "hello" in texts and "f" in texts and "d" in texts
    assert extra == IMAGE_TOKENS + 2 * 4 + 8


def test_a_count_of_no_messages_is_refused_as_anthropic_does() -> None:
    """The local estimate answers like the upstream's own count would (a pass-through gets its 400)."""
    from gateway.errors import BadRequest

    with pytest.raises(BadRequest, match="at least one message"):
        am.decode_count_request(b'{"model": "m", "system": "sys", "messages": []}')


def test_example_messages_toml_loads() -> None:
    config = load_config(EXAMPLES / "messages.toml")
    assert set(config.models) == {"claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"}
    assert all(m.provider == "mock" for m in config.models.values())


def test_registry() -> None:
    assert DIALECT_PATHS["/v1/messages"] == ("messages", am.ANTHROPIC_MESSAGES)
    assert am.ANTHROPIC_MESSAGES.endpoint == "messages"


# -- the Anthropic pass-through relay ----------------------------------------------------------------


class _Ctx:
    usage: Any = None
    include_usage = False
    request_id = "rid"
    dialect = am.ANTHROPIC_MESSAGES


def _anthropic_stream(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(b"event: " + k.encode() + b"\ndata: " + json.dumps({"type": k, **d}).encode() + b"\n\n"
                    for k, d in events)


PASS_STREAM = _anthropic_stream(
    ("message_start", {"message": {"id": "m", "type": "message", "role": "assistant", "model": "c",
                                   "content": [], "usage": {"input_tokens": 5, "output_tokens": 1,
                                                            "cache_read_input_tokens": 4}}}),
    ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "an error? no"}}),
    ("content_block_stop", {"index": 0}),
    ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 6}}),
    ("message_stop", {}),
)


def test_passthrough_relay_forwards_bytes_and_reads_usage_whatever_the_fragments() -> None:
    from gateway.providers.anthropic import PassThroughRelay

    rng = random.Random(17)
    for cuts in ([], list(range(1, len(PASS_STREAM))),
                 *(sorted(rng.sample(range(1, len(PASS_STREAM)), 12)) for _ in range(20))):
        ctx = _Ctx()
        relay = PassThroughRelay(ctx)
        out, start = b"", 0
        for cut in [*cuts, len(PASS_STREAM)]:
            out += relay.feed(PASS_STREAM[start:cut])
            start = cut
        out += relay.end()
        assert out == PASS_STREAM and relay.error is None
        assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (9, 6)
        assert ctx.usage.prompt_tokens_details.cached_tokens == 4


def test_passthrough_relay_errors() -> None:
    from gateway.providers.anthropic import PassThroughRelay

    relay = PassThroughRelay(_Ctx())
    error = _anthropic_stream(("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}))
    assert relay.feed(error) == b""  # nothing sent: a routed model may still go elsewhere
    assert relay.error is not None and relay.error.status == 503
    assert json.loads(am.ANTHROPIC_MESSAGES.stream_error(relay.error, "r").split(b"data: ")[1])["error"] == {
        "type": "overloaded_error", "message": "Overloaded"}
    cut = PassThroughRelay(_Ctx())
    assert cut.feed(PASS_STREAM[: PASS_STREAM.index(b"event: message_delta")])
    assert cut.end() == b"" and cut.error is not None and cut.error.status == 502
