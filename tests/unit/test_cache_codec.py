"""The cache's OpenAI chat codec: a streamed answer assembles into the IR answer it spells, and a replay
(whole or streamed) carries text, reasoning (text and signed blocks), tool calls and usage intact."""

from __future__ import annotations

import json
from typing import Any

from gateway import ir
from gateway.cache.openai_chat import StreamAssembler, read_whole, replay
from gateway.cache.phase import CacheEntry, _pack, _unpack

ANSWER = ir.Response(
    "chatcmpl-1", "gpt-x",
    [
        ir.ThinkingPart("Let me think. ", "sig-abc"),
        ir.RedactedThinkingPart("opaque"),
        ir.TextPart("Calling the tool."),
        ir.ToolCallPart("call_1", "get_weather", '{"city": "Paris"}'),
        ir.ToolCallPart("call_2", "get_time", '{"tz": "CET"}'),
    ],
    ir.StopReason.TOOL_USE,
    usage=ir.Usage(input_tokens=7, output_tokens=20, cache_read_tokens=3, reasoning_tokens=5),
)


def _assemble(data: bytes, pieces: int) -> tuple[ir.Response, int] | None:
    a = StreamAssembler(1 << 20)
    step = max(len(data) // pieces, 1)
    for i in range(0, len(data), step):
        a.feed(data[i:i + step])
    return a.result()


def test_stream_replay_assembles_back_to_the_same_answer() -> None:
    for include_usage in (True, False):
        stream = replay(ANSWER, 123, True, include_usage)
        for pieces in (1, 7, len(stream)):
            got = _assemble(stream, pieces)
            assert got is not None
            resp, created = got
            assert created == 123
            assert resp.content == ANSWER.content
            assert resp.stop_reason is ANSWER.stop_reason
            if include_usage:
                assert resp.usage == ANSWER.usage


def test_whole_replay_reads_back_the_same_answer() -> None:
    body = replay(ANSWER, 5, False, False)
    msg = json.loads(body)["choices"][0]["message"]
    assert msg["reasoning_content"] == "Let me think. "
    assert [c["id"] for c in msg["tool_calls"]] == ["call_1", "call_2"]
    got = read_whole(body)
    assert got is not None and got[0].content == ANSWER.content and got[0].usage == ANSWER.usage


def test_incomplete_or_unrepresentable_answers_are_not_stored() -> None:
    stream = replay(ANSWER, 1, True, True)
    cut = stream[: stream.rindex(b"data: [DONE]")]
    assert _assemble(cut, 3) is None  # no [DONE]
    error = stream.replace(b"data: [DONE]", b'data: {"error": {"message": "boom"}}\n\ndata: [DONE]')
    assert _assemble(error, 1) is None
    a = StreamAssembler(100)  # past its limit: gives up
    a.feed(stream)
    assert a.result() is None
    two: dict[str, Any] = json.loads(replay(ANSWER, 1, False, False))
    two["choices"].append({**two["choices"][0], "index": 1})
    assert read_whole(json.dumps(two).encode()) is None
    logprobs = json.loads(replay(ANSWER, 1, False, False))
    logprobs["choices"][0]["logprobs"] = {"content": []}
    assert read_whole(json.dumps(logprobs).encode()) is None
    assert read_whole(b"not json") is None


def test_entries_round_trip_through_their_stored_form() -> None:
    entry = CacheEntry(ANSWER, 9, 1000.5, 0.0012, "alpha", "key1", "gpt-x")
    assert _unpack(_pack(entry)) == entry
