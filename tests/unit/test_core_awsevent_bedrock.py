"""The Bedrock stream machine on the compiled event-stream decoder: the text-delta fast path gives what
the transition table gives, and broken framing (including a body cut inside a message) fails the stream
with the 502 a broken stream gets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import ir
from gateway.providers import bedrock_translate as tr
from gateway.providers.mock_bedrock import event_message

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "providers" / "bedrock" / "streams"


def ev(kind: str, payload: dict[str, Any]) -> bytes:
    return event_message({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                         json.dumps(payload).encode())


def run(data: bytes, step: int = 0) -> list[ir.StreamEvent]:
    machine = tr.BedrockStream("chatcmpl-1", "claude")
    out: list[ir.StreamEvent] = []
    for i in range(0, len(data), step or len(data) or 1):
        out += machine.feed(data[i:i + (step or len(data))])
    return out + machine.close()


START = ev("messageStart", {"role": "assistant"})
TOOL = ev("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}})
END = ev("messageStop", {"stopReason": "end_turn"}) + ev("metadata", {"usage": {
    "inputTokens": 1, "outputTokens": 2, "totalTokens": 3}, "metrics": {"latencyMs": 1}})


def text(i: int, t: str) -> bytes:
    return ev("contentBlockDelta", {"contentBlockIndex": i, "delta": {"text": t}})


def failure(events: list[ir.StreamEvent]) -> ir.ProviderError:
    last = events[-1]
    assert isinstance(last, ir.StreamError), events
    assert (last.error.status, last.error.code) == (502, "bad_gateway")
    return last.error


def test_text_deltas_open_then_extend_a_block() -> None:
    events = run(START + text(0, "a") + text(0, "") + text(0, "b") + END, step=5)
    assert events[1:4] == [ir.BlockStart(0, "text"), ir.BlockDelta(0, "text", "a"), ir.BlockDelta(0, "text", "b")]
    assert isinstance(events[-1], ir.MessageStop)


def test_a_text_delta_on_a_tool_block_breaks_the_grammar() -> None:
    assert "text delta on a tool_call block" in failure(run(START + TOOL + text(0, "x") + END)).message


def test_a_malformed_delta_payload() -> None:
    bad = event_message({":event-type": "contentBlockDelta", ":message-type": "event"}, b'{"delta": 5}')
    assert "malformed contentBlockDelta" in failure(run(START + text(0, "a") + bad)).message


def test_a_delta_before_message_start_breaks_the_grammar() -> None:
    assert "unexpected contentBlockDelta" in failure(run(text(0, "a") + START)).message


@pytest.mark.parametrize("name", sorted(p.stem for p in FIX.glob("*.jsonl")))
def test_the_fixture_streams_byte_by_byte_as_whole(name: str) -> None:
    lines = [json.loads(line) for line in (FIX / f"{name}.jsonl").read_text().splitlines() if line]
    data = b"".join(event_message(x["headers"], json.dumps(x["payload"]).encode()) for x in lines)
    assert run(data, step=1) == run(data)


def test_a_body_cut_inside_the_metadata_loses_the_usage_and_fails() -> None:
    data = START + text(0, "a") + END
    events = run(data[:-10])
    assert "ended inside an event-stream message" in failure(events).message
    assert not any(isinstance(e, ir.MessageStop | ir.UsageUpdate) for e in events)


def test_broken_framing_fails_once_and_stops() -> None:
    data = bytearray(START + text(0, "a") + text(0, "b"))
    data[len(START) + 20] ^= 1
    machine = tr.BedrockStream("chatcmpl-1", "claude")
    events = machine.feed(bytes(data))
    assert "broken event-stream message: the message checksum does not match" in failure(events).message
    assert machine.feed(text(0, "c")) == [] and machine.close() == []
