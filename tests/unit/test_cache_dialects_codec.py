"""The cache's codecs for Anthropic Messages and OpenAI Responses: an answer read back (whole or as a
stream, split anywhere) is the IR answer that was sent; what an entry could not replay faithfully is
not stored; the replay is the dialect's own encoding."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from test_cache_keys import PROPS

from gateway import ir
from gateway.cache.anthropic_messages import StreamAssembler, read_whole, replay
from gateway.cache.openai_responses import OpenAIResponsesCodec
from gateway.cache.phase import CODECS, CacheEntry, _pack, _unpack
from gateway.dialects import openai_responses as responses

_text = st.text(min_size=1, max_size=20)
_part = st.one_of(
    st.builds(ir.TextPart, _text),
    st.builds(lambda t, s: ir.ThinkingPart(t, s), _text, st.one_of(st.none(), st.text(min_size=1, max_size=9))),
    st.builds(ir.RedactedThinkingPart, _text),
    # the input as the whole answer's reader writes it (a stream's is the upstream's text, as it came)
    st.builds(lambda i, n, a: ir.ToolCallPart(i, n, msgspec.json.encode(a).decode()),
              st.from_regex(r"toolu_[a-z0-9]{4}", fullmatch=True), st.from_regex(r"[a-z]{1,6}", fullmatch=True),
              st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=3)),
)
_usage = st.builds(ir.Usage, st.integers(0, 9999), st.integers(0, 9999), st.integers(0, 999), st.integers(0, 999))
_stop = st.sampled_from([ir.StopReason.END_TURN, ir.StopReason.MAX_TOKENS, ir.StopReason.TOOL_USE,
                         ir.StopReason.STOP_SEQUENCE])
_answers = st.builds(
    lambda parts, stop, u: ir.Response("msg_01", "claude-x", parts, stop,
                                       "END" if stop is ir.StopReason.STOP_SEQUENCE else None, u),
    st.lists(_part, min_size=1, max_size=4), _stop, _usage,
)


def _normal(resp: ir.Response) -> ir.Response:
    """What the Messages API says of an answer: a thinking block's signature is a string (empty when
    the upstream gave none)."""
    parts = [ir.ThinkingPart(p.text, p.signature or None) if isinstance(p, ir.ThinkingPart) else p
             for p in resp.content]
    return ir.Response(resp.id, resp.model, parts, resp.stop_reason, resp.stop_sequence, resp.usage)


def _assemble(stream: bytes, cuts: list[int], limit: int = 1 << 20) -> Any:
    a = StreamAssembler(limit)
    last = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}):
        a.feed(stream[last:cut])
        last = cut
    a.feed(stream[last:])
    return a.result()


@PROPS
@given(resp=_answers, cuts=st.lists(st.integers(0, 1 << 16), max_size=8))
def test_messages_whole_and_stream_read_back_as_sent(resp: ir.Response, cuts: list[int]) -> None:
    whole = replay(resp, stream=False)
    read = read_whole(whole)
    assert read is not None and read[0] == _normal(resp)
    streamed = _assemble(replay(resp, stream=True), cuts)
    assert streamed is not None and streamed[0] == _normal(resp)
    entry = CacheEntry(streamed[0], 0, 1.0, None, "t", "k", "m")
    assert _unpack(_pack(entry)) == entry  # and it is stored as it is


def test_messages_stream_of_an_anthropic_upstream() -> None:
    """Anthropic's own bytes (pass-through): CRLF lines, pings, an unknown event, the usage of
    ``message_delta`` over ``message_start``'s."""
    events = [
        ("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
                                       "content": [], "usage": {"input_tokens": 7, "output_tokens": 1,
                                                                "cache_read_input_tokens": 4}}}),
        ("ping", {}),
        ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "",
                                                               "signature": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
        ("content_block_stop", {"index": 0}),
        ("something_new", {"x": 1}),
        ("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                               "name": "w", "input": {}}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": 'ty":"P"}'}}),
        ("content_block_stop", {"index": 1}),
        ("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 30}}),
        ("message_stop", {}),
    ]
    body = b"".join(b"event: %s\r\ndata: %s\r\n\r\n" % (k.encode(), json.dumps({"type": k, **d}).encode())
                    for k, d in events)
    got = _assemble(body, [5, 77, 78, 300])
    assert got is not None
    assert got[0] == ir.Response("msg_1", "c", [ir.ThinkingPart("hmm", "sig"), ir.ToolCallPart(
        "toolu_1", "w", '{"city":"P"}')], ir.StopReason.TOOL_USE, None,
        ir.Usage(input_tokens=7, output_tokens=30, cache_read_tokens=4))


def _sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (k.encode(), json.dumps({"type": k, **d}).encode())
                    for k, d in events)


_START = ("message_start", {"message": {"id": "m", "model": "c", "content": [], "usage": {"input_tokens": 1}}})
_TEXT = [("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
         ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
         ("content_block_stop", {"index": 0})]
_END = [("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
        ("message_stop", {})]


def test_messages_what_is_not_stored() -> None:
    assert _assemble(_sse(_START, *_TEXT, *_END), []) is not None
    assert _assemble(_sse(_START, *_TEXT), []) is None  # cut before its end
    assert _assemble(_sse(_START, *_TEXT, ("error", {"error": {"type": "overloaded_error"}})), []) is None
    refusal = ("message_delta", {"delta": {"stop_reason": "refusal"}})
    assert _assemble(_sse(_START, *_TEXT, refusal, ("message_stop", {})), []) is None
    server = ("content_block_start", {"index": 1, "content_block": {"type": "server_tool_use", "id": "s"}})
    assert _assemble(_sse(_START, *_TEXT, server, *_END), []) is None
    citation = ("content_block_delta", {"index": 0, "delta": {"type": "citations_delta", "citation": {}}})
    assert _assemble(_sse(_START, *_TEXT[:2], citation, *_TEXT[2:], *_END), []) is None
    assert _assemble(_sse(_START, *_TEXT, *_END), [], limit=100) is None  # larger than the bound
    assert _assemble(_sse(_START, *_TEXT, *_END) + b"data: {}\n\n", []) is None  # after message_stop
    base = {"id": "m", "type": "message", "model": "c", "stop_reason": "end_turn",
            "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 1, "output_tokens": 1}}
    assert read_whole(json.dumps(base).encode()) is not None
    for change in ({"stop_reason": "refusal"}, {"stop_reason": "pause_turn"}, {"container": {"id": "c"}},
                   {"content": [{"type": "text", "text": "hi", "citations": [{"type": "x"}]}]},
                   {"content": [{"type": "web_search_tool_result", "tool_use_id": "s", "content": []}]},
                   {"type": "error"}):
        assert read_whole(json.dumps({**base, **change}).encode()) is None, change
    assert read_whole(b"not json") is None


# -- OpenAI Responses --------------------------------------------------------------------------------


def _responses_ctx(stream: bool, body: dict[str, Any] | None = None) -> Any:
    decoded = responses.decode_request(json.dumps(body or {"model": "gpt", "input": "hi"}).encode())
    dialect = responses.OPENAI_RESPONSES.for_request(decoded, [], 1700000000)
    return SimpleNamespace(dialect=dialect, stream=stream, include_usage=False, request_id="req")


@PROPS
@given(resp=_answers, stream=st.booleans())
def test_responses_replay_is_a_new_response_and_reads_back(resp: ir.Response, stream: bool) -> None:
    codec = OpenAIResponsesCodec()
    ctx = _responses_ctx(stream)
    body = codec.replay(ctx, resp, 0)
    d = ctx.dialect
    if stream:
        assert b"response.output_item.done" in body and b"response.completed" not in body  # the front's
        obj = d.encoder.final_object()
    else:
        obj = json.loads(body)
    assert obj["id"] == d.response_id and obj["created_at"] == 1700000000
    got = codec.answer(ctx, None, None)
    assert got is not None
    assert [type(p) for p in got[0].content] == [type(p) for p in resp.content]
    assert got[0].usage == resp.usage and got[0].stop_reason == resp.stop_reason


def test_responses_what_is_not_stored() -> None:
    codec = OpenAIResponsesCodec()
    ctx = _responses_ctx(True)
    assert codec.answer(ctx, None, None) is None  # nothing answered yet
    ctx.dialect.encoder.encode(ir.MessageStart("r", "gpt"))
    ctx.dialect.encoder.encode(ir.BlockStart(0, "text"))
    assert codec.answer(ctx, None, None) is None  # not finished
    ctx = _responses_ctx(False)
    refusal = ir.Response("r", "gpt", [ir.TextPart("no")], ir.StopReason.REFUSAL)
    codec.replay(ctx, refusal, 0)
    assert codec.answer(ctx, None, None) is None
    assert set(CODECS) == {"chat", "messages", "responses"}
