"""The OpenAI chat dialect on its own: request decoding into the IR, completion and chunk encoding.

Encoded answers and chunks are validated with the ``openai`` SDK's ``ChatCompletion`` and
``ChatCompletionChunk`` models; bad requests raise BadRequest (400, OpenAI error shape) naming the field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway import ir
from gateway.dialects import openai_chat as oc
from gateway.errors import BadRequest

CREATED = 1700000000


def _decode(**fields: Any) -> ir.Request:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return oc.decode_request(json.dumps(body).encode())


def test_decode_full_request() -> None:
    req = _decode(
        messages=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGR", "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
        ],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=10,
        max_completion_tokens=20,
        stop="END",
        tools=[{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": True}},
        reasoning_effort="medium",
        user="u",
        seed=1,
        top_k=5,
    )
    assert req.stream and req.include_usage
    assert req.max_tokens == 20  # max_completion_tokens wins
    assert req.stop == ["END"]
    assert req.messages[0] == ir.Message("developer", [ir.TextPart("Be terse.")])
    assert req.messages[1].name == "ann"
    assert req.messages[1].content[1] == ir.ImagePart(data="UklGR", media_type="image/webp", detail="low")
    assert req.messages[2].content == [ir.ToolCallPart("c1", "f", "{}")]
    assert req.messages[3] == ir.Message("tool", [ir.ToolResultPart("c1", [ir.TextPart("done")])])
    assert req.tools == [ir.Tool("f", "d", {"type": "object"}, True)]
    assert req.tool_choice == ir.ToolChoice("named", "f")
    assert req.parallel_tool_calls is False
    assert req.response_format == ir.ResponseFormat("json_schema", "s", {"type": "object"}, True)
    assert req.reasoning == ir.Reasoning(effort="medium")
    assert (req.user, req.seed, req.top_k) == ("u", 1, 5)


def test_include_usage_only_on_streams() -> None:
    assert not _decode(stream_options={"include_usage": True}).include_usage


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", "body"),
        (b'{"model": "m"}', "body"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "body"),
        (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]}', "body"),
        (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]}', "messages"),
        (b'{"model": "m", "messages": [{"role": "tool", "content": "x"}]}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}', "response_format"),
        (b'{"model": "m", "messages": [{"role": "assistant", "content": "x", "thinking_blocks": [{"type": "thinking", "thinking": "unsigned"}]}]}', "messages"),
    ],
)
def test_bad_requests_are_400_with_the_field(body: bytes, param: str) -> None:
    with pytest.raises(BadRequest) as e:
        oc.decode_request(body)
    assert e.value.status == 400 and e.value.param == param
    assert json.loads(e.value.body)["error"]["type"] == "invalid_request_error"


def test_validation_message_names_the_path() -> None:
    with pytest.raises(BadRequest) as e:
        oc.decode_request(b'{"model": "m", "messages": [{"role": "user", "content": 5}]}')
    assert "$.messages[0].content" in e.value.message


def test_encode_response_text_and_tools() -> None:
    resp = ir.Response(
        id="msg_1",
        model="claude-x",
        content=[ir.TextPart("a"), ir.TextPart("b"), ir.ToolCallPart("t1", "f", '{"x":1}')],
        stop_reason=ir.StopReason.TOOL_USE,
        usage=ir.Usage(input_tokens=5, output_tokens=7, cache_read_tokens=3, cache_write_tokens=2),
    )
    body = oc.encode_response(resp, CREATED)
    cc = ChatCompletion.model_validate_json(body)
    assert cc.choices[0].message.content == "ab"
    assert cc.choices[0].message.tool_calls is not None
    assert cc.choices[0].message.tool_calls[0].id == "t1"
    assert cc.choices[0].finish_reason == "tool_calls"
    assert cc.usage is not None and cc.usage.prompt_tokens == 10 and cc.usage.total_tokens == 17
    assert "reasoning_content" not in json.loads(body)["choices"][0]["message"]


def test_encode_response_empty_answer_has_empty_content() -> None:
    body = json.loads(oc.encode_response(ir.Response("m", "c", [], ir.StopReason.END_TURN), CREATED))
    assert body["choices"][0]["message"]["content"] == ""


def _events() -> list[ir.StreamEvent]:
    return [
        ir.MessageStart("msg_9", "claude-x", ir.Usage(input_tokens=4)),
        ir.BlockStart(0, "text"),
        ir.BlockDelta(0, "text", "Hi"),
        ir.BlockStop(0),
        ir.BlockStart(1, "tool_call", "t1", "f"),
        ir.BlockDelta(1, "arguments", "{}"),
        ir.BlockStop(1),
        ir.UsageUpdate(ir.Usage(input_tokens=4, output_tokens=9)),
        ir.MessageStop(ir.StopReason.TOOL_USE),
    ]


def _lines(sse: bytes) -> list[bytes]:
    return [e[6:] for e in sse.split(b"\n\n") if e]


def test_chunks_without_include_usage() -> None:
    enc = oc.ChunkEncoder(CREATED, include_usage=False)
    out = enc.encode_all(_events())
    lines = _lines(out)
    assert lines[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(x) for x in lines[:-1]]
    assert all("usage" not in json.loads(x) for x in lines[:-1])
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert enc.done and enc.encode(ir.BlockDelta(0, "text", "late")) == b""


def test_chunks_with_include_usage() -> None:
    lines = _lines(oc.ChunkEncoder(CREATED, include_usage=True).encode_all(_events()))
    usage = ChatCompletionChunk.model_validate_json(lines[-2])
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (4, 9)
    assert all(json.loads(x)["usage"] is None for x in lines[:-2])


def test_stream_error_line_ends_the_stream() -> None:
    enc = oc.ChunkEncoder(CREATED, include_usage=False)
    err = ir.ProviderError(503, "server_error", "upstream_overloaded", "Overloaded", True, "overloaded_error")
    out = enc.encode_all([ir.MessageStart("m", "c"), ir.StreamError(err)])
    assert _lines(out)[-2:] == [oc.encode_error(err), b"[DONE]"]  # the error, then the regular end
    assert enc.encode(ir.MessageStop(ir.StopReason.END_TURN)) == b""


def test_finish_reason_of_none_is_stop() -> None:
    assert oc.finish_reason(None) == "stop"
