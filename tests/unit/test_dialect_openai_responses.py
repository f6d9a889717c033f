"""The Responses dialect: request decoding, the response object and the event stream, checked against the
``openai`` SDK's own types; an OpenAI upstream's chat stream through it; the response store."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import msgspec
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from gateway import errors, ir
from gateway.dialects import openai_responses as dialect
from gateway.providers import openai_translate as oai
from gateway.responses.store import SqliteResponseStore

_events = pydantic.TypeAdapter(ResponseStreamEvent)


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


def _parse_sse(data: bytes) -> list[dict[str, Any]]:
    out = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        name, payload = block.split("\n", 1)
        assert name.startswith("event: ")
        assert payload.startswith("data: ")
        obj = json.loads(payload[6:])
        assert obj["type"] == name[7:]
        out.append(obj)
    return out


# -- request -------------------------------------------------------------------------------------------


def test_string_input_and_instructions() -> None:
    d = dialect.decode_request(_body(input="hi", instructions="be brief", max_output_tokens=50, temperature=0.3))
    req = d.ir_request([])
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.messages[1].content == [ir.TextPart("hi")]
    assert req.max_tokens == 50 and req.temperature == 0.3
    assert d.store and not d.stream
    assert d.items[0]["type"] == "message" and d.items[0]["id"].startswith("msg_")


def test_items_tool_round_trip_and_previous_conversation() -> None:
    d = dialect.decode_request(_body(
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "get", "arguments": '{"c":"P"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get", "arguments": '{"c":"L"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2",
             "output": [{"type": "input_text", "text": "rain"}]},
        ],
        tools=[{"type": "function", "name": "get", "parameters": {"type": "object"}, "strict": True}],
        tool_choice={"type": "function", "name": "get"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
        reasoning={"effort": "low"},
    ))
    prev = [ir.Message("user", [ir.TextPart("earlier")])]
    req = d.ir_request(prev)
    assert [m.role for m in req.messages] == ["user", "user", "assistant", "tool", "tool"]
    calls = req.messages[2].content
    assert calls == [ir.ToolCallPart("call_1", "get", '{"c":"P"}'), ir.ToolCallPart("call_2", "get", '{"c":"L"}')]
    assert req.messages[4].content == [ir.ToolResultPart("call_2", [ir.TextPart("rain")])]
    assert req.tools == [ir.Tool("get", None, {"type": "object"}, True)]
    assert req.tool_choice == ir.ToolChoice("named", "get")
    assert req.parallel_tool_calls is False
    assert req.response_format == ir.ResponseFormat("json_schema", "w", {"type": "object"}, True)
    assert req.reasoning == ir.Reasoning(effort="low")
    chat = json.loads(oai.encode_request(msgspec.structs.replace(req, stream=True), "up-1"))
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["messages"][2]["tool_calls"][1]["id"] == "call_2"
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert chat["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get"}}
    assert chat["reasoning_effort"] == "low"


@pytest.mark.parametrize("tool", ["web_search", "file_search", "computer_use_preview", "code_interpreter", "mcp"])
def test_builtin_tools_are_refused(tool: str) -> None:
    with pytest.raises(errors.BadRequest) as info:
        dialect.decode_request(_body(input="x", tools=[{"type": tool}]))
    assert info.value.code == "unsupported_tool"
    assert info.value.param == "tools[0].type"
    assert tool in info.value.message


@pytest.mark.parametrize("body", [
    b"not json", _body(input=[]), _body(input=[{"type": "item_reference", "id": "x"}]),
    _body(input=[{"role": "robot", "content": "x"}]), _body(input="x", background=True),
    _body(input=[{"type": "function_call_output"}]), _body(input="x", tool_choice="sometimes"),
])
def test_bad_requests(body: bytes) -> None:
    with pytest.raises(errors.BadRequest):
        dialect.decode_request(body)


def test_reasoning_item_carries_the_signature_back() -> None:
    d = dialect.decode_request(_body(input=[
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "t"}],
         "encrypted_content": "SIG"},
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "redacted:DATA"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "next"},
    ]))
    parts = d.messages[0].content
    assert parts == [ir.ThinkingPart("t", "SIG"), ir.RedactedThinkingPart("DATA"), ir.TextPart("answer")]


# -- response object -----------------------------------------------------------------------------------


def test_response_object_validates_with_the_sdk() -> None:
    d = dialect.decode_request(_body(input="x", metadata={"a": "b"}, tools=[{"type": "function", "name": "f"}]))
    content: list[ir.Part] = [ir.ThinkingPart("hmm", "sig"), ir.TextPart("a"), ir.TextPart("b"),
                              ir.ToolCallPart("call_9", "f", "{}")]
    usage = ir.Usage(input_tokens=5, output_tokens=7, cache_read_tokens=3, cache_write_tokens=2,
                     reasoning_tokens=1)
    obj = dialect.response_object(d.params, "resp_1", 100, "m", dialect.output_items(content), "completed",
                                  usage, ir.StopReason.TOOL_USE)
    r = Response.model_validate(msgspec.to_builtins(obj))
    assert r.status == "completed" and r.output_text == "ab"
    assert [o.type for o in r.output] == ["reasoning", "message", "function_call"]
    assert r.output[2].call_id == "call_9"  # type: ignore[union-attr]
    assert r.usage is not None and r.usage.input_tokens == 10 and r.usage.input_tokens_details.cached_tokens == 3
    assert r.usage.total_tokens == 17 and r.usage.output_tokens_details.reasoning_tokens == 1
    assert r.metadata == {"a": "b"}
    cut = dialect.response_object(d.params, "resp_2", 100, "m", [], "completed", usage, ir.StopReason.MAX_TOKENS)
    r = Response.model_validate(msgspec.to_builtins(cut))
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"


# -- stream encoder --------------------------------------------------------------------------------------


def _answer_events() -> list[ir.StreamEvent]:
    return [
        ir.MessageStart("x", "mock-1", ir.Usage(input_tokens=4)),
        ir.BlockStart(0, "thinking"), ir.BlockDelta(0, "thinking", "let me"), ir.BlockDelta(0, "signature", "S"),
        ir.BlockStop(0),
        ir.BlockStart(1, "text"), ir.BlockDelta(1, "text", "Hel"), ir.BlockDelta(1, "text", "lo"), ir.BlockStop(1),
        ir.BlockStart(2, "tool_call", "call_a", "get"), ir.BlockDelta(2, "arguments", '{"x"'),
        ir.BlockDelta(2, "arguments", ":1}"), ir.BlockStop(2),
        ir.UsageUpdate(ir.Usage(input_tokens=4, output_tokens=9)),
        ir.MessageStop(ir.StopReason.TOOL_USE),
    ]


def test_stream_events_validate_with_the_sdk() -> None:
    d = dialect.decode_request(_body(input="x", stream=True))
    enc = dialect.EventEncoder(d.params, "resp_s", 1)
    data = b"".join(enc.encode(e) for e in _answer_events())
    assert enc.finished
    data += enc.terminal()
    events = _parse_sse(data)
    for e in events:
        _events.validate_python(e)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for want in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                 "response.output_text.done", "response.content_part.done", "response.reasoning_text.delta",
                 "response.function_call_arguments.delta", "response.function_call_arguments.done",
                 "response.output_item.done"):
        assert want in kinds
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Hello"
    assert final.usage is not None and final.usage.output_tokens == 9 and final.usage.input_tokens == 4
    call = final.output[2]
    assert call.type == "function_call" and call.arguments == '{"x":1}' and call.call_id == "call_a"
    assert final.output[0].type == "reasoning" and final.output[0].encrypted_content == "S"
    assert enc.response().content == [ir.ThinkingPart("let me", "S"), ir.TextPart("Hello"),
                                      ir.ToolCallPart("call_a", "get", '{"x":1}')]
    # the output indexes of the items match their place in the final output
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1, 2]


def test_stream_error_fails_the_response() -> None:
    d = dialect.decode_request(_body(input="x", stream=True))
    enc = dialect.EventEncoder(d.params, "resp_f", 1)
    data = enc.encode(ir.MessageStart("x", "m")) + enc.encode(ir.BlockStart(0, "text"))
    data += enc.encode(ir.StreamError(ir.ProviderError(503, "server_error", "upstream_overloaded", "busy")))
    events = _parse_sse(data)
    for e in events:
        _events.validate_python(e)
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed" and failed.error is not None and failed.error.message == "busy"
    assert enc.encode(ir.MessageStop(ir.StopReason.END_TURN)) == b""


def test_a_stream_refused_before_its_content_starts_again_from_response_created() -> None:
    """An upstream stream that fails right after its start: the relay sends nothing (the attempt may fail
    over), and the request's one encoder forgets the start it encoded, so what the client then gets (the
    next attempt, or the error) begins with ``response.created`` at sequence number 0, as the SDK needs."""
    from gateway.providers import anthropic_translate as xlate
    from gateway.providers.bridge import BridgeRelay

    d = dialect.decode_request(_body(input="x", stream=True))
    front = dialect.OPENAI_RESPONSES.for_request(d, [], 1)

    class Ctx:
        usage: Any = None
        request_id = "r1"

    ctx = Ctx()
    relay = BridgeRelay(ctx, xlate.AnthropicStream(), front.stream_encoder(ctx, 1))
    start = (b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_1", "type": '
             b'"message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, '
             b'"stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}\n\n')
    assert relay.feed(start + b"event: content_block_delta\ndata: {<<not JSON>>\n\n") == b""
    assert relay.error is not None
    events = _parse_sse(front.stream_error(relay.error, "r1"))
    for e in events:
        _events.validate_python(e)
    assert [(e["type"], e["sequence_number"]) for e in events] == [
        ("response.created", 0), ("response.in_progress", 1), ("error", 2), ("response.failed", 3)]


# -- an OpenAI upstream's chat stream, through the IR ------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {"id": "c1", "model": "mock-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def test_chunk_decoder_parallel_calls_any_cut() -> None:
    stream = b"".join([
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hi"}),
        _chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]}),
        _chunk({}, "tool_calls"),
        b'data: {"id":"c1","model":"mock-1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,'
        b'"prompt_tokens_details":{"cached_tokens":2}}}\n\n',
        b"data: [DONE]\n\n",
    ])
    rng = random.Random(7)
    results = []
    for _ in range(20):
        dec = oai.ChunkStream()
        events: list[ir.StreamEvent] = []
        i = 0
        while i < len(stream):
            j = i + rng.randint(1, 40)
            events += dec.feed(stream[i:j])
            i = j
        events += dec.close()
        results.append(events)
    assert all(r == results[0] for r in results)
    enc = dialect.EventEncoder(dialect.decode_request(_body(input="x")).params, "resp", 1)
    for e in results[0]:
        enc.encode(e)
    assert enc.finished
    resp = enc.response()
    assert resp.content == [ir.TextPart("Hi"), ir.ToolCallPart("a", "f", "{}"), ir.ToolCallPart("b", "g", "{}")]
    assert resp.stop_reason is ir.StopReason.TOOL_USE
    assert resp.usage == ir.Usage(input_tokens=3, output_tokens=3, cache_read_tokens=2)


def test_dialect_object_encodes_a_whole_answer_and_its_stream() -> None:
    d = dialect.decode_request(_body(input="x", store=True))
    prev = [ir.Message("user", [ir.TextPart("before")])]
    per_request = dialect.OPENAI_RESPONSES.for_request(d, prev, 5)
    assert per_request is not dialect.OPENAI_RESPONSES and per_request.response_id.startswith("resp_")
    assert per_request.decode_request(b"ignored").messages[0] == prev[0]
    body = per_request.encode_response(ir.Response("up", "m", [ir.TextPart("hi")], ir.StopReason.END_TURN), 0)
    r = Response.model_validate_json(body)
    assert r.id == per_request.response_id and r.output_text == "hi" and r.created_at == 5
    assert per_request.stored_object == body and per_request.answer is not None
    err = errors.ServiceUnavailable("busy")
    events = _parse_sse(per_request.stream_error(err, "rid"))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    for e in events:
        _events.validate_python(e)


# -- the SQLite response store --------------------------------------------------------------------------


def test_sqlite_store_scoped_and_expiring(tmp_path: Any) -> None:
    async def run() -> None:
        now = [1000.0]
        store = SqliteResponseStore(str(tmp_path / "r.db"), clock=lambda: now[0])
        await store._run(store._connect)
        try:
            await store.put("t1", "resp_a", b"A", 60)
            assert await store.get("t1", "resp_a") == b"A"
            assert await store.get("t2", "resp_a") is None  # another tenant: not found
            assert not await store.delete("t2", "resp_a")
            assert await store.get("t1", "resp_a") == b"A"
            now[0] += 61
            assert await store.get("t1", "resp_a") is None  # past its retention
            await store.put("t1", "resp_b", b"B", 60)
            assert await store.delete("t1", "resp_b")
            assert await store.get("t1", "resp_b") is None
        finally:
            await store.close()

    asyncio.run(run())
