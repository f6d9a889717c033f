"""The translation codecs' fast paths give what their general paths give, byte for byte.

Each codec takes a shortcut for the common shape (a message that is one plain text part, an answer
that is one text part, a stream delta of text on the open text block); the general path beside it
(``_any_message``, ``_encode_any_response``, ``_blocks``, ``_add_message``, ``_any_delta``,
``_any_chunk``) handles every shape. These properties run both on the same varied input (any text,
empty or not, with and without the optional fields) and compare the results.
"""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import ir
from gateway.dialects import openai_chat
from gateway.providers import anthropic_translate, gemini_translate, openai_translate

PROPS = settings(
    max_examples=int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TEXT = st.text(max_size=40)
NAME = st.none() | st.text(min_size=1, max_size=8)
CACHE = st.none() | st.just({"type": "ephemeral"})
CITATIONS = st.none() | st.just([{"type": "char_location", "cited_text": "x"}])
ROLES = st.sampled_from(["user", "assistant", "system", "developer", "tool"])
STOPS = st.none() | st.sampled_from(list(ir.StopReason))
COUNT = st.integers(min_value=0, max_value=10**6)
USAGE = st.builds(ir.Usage, COUNT, COUNT, COUNT, COUNT, COUNT)


# ---- OpenAI chat client: request messages and answers ----------------------------------------------


@PROPS
@given(role=st.sampled_from(["user", "assistant", "system", "developer"]), text=TEXT, name=NAME,
       thinking=st.booleans())
def test_chat_message_fast_path_matches_the_general_path(role: str, text: str, name: str | None,
                                                         thinking: bool) -> None:
    m: dict[str, Any] = {"role": role, "content": text}
    if name is not None:
        m["name"] = name
    if thinking:
        m["thinking_blocks"] = [{"type": "thinking", "thinking": "t", "signature": "s"}]
    body = json.dumps({"model": "m", "messages": [m]}).encode()
    decoded = openai_chat._request_decoder.decode(body).messages[0]
    assert openai_chat._message(decoded) == openai_chat._any_message(decoded)


@PROPS
@given(text=TEXT, rid=st.sampled_from(["", "chatcmpl-a1", "msg_01X", "x9"]), stop=STOPS, usage=USAGE,
       citations=CITATIONS, created=COUNT)
def test_chat_answer_fast_path_matches_the_general_path(text: str, rid: str, stop: ir.StopReason | None,
                                                        usage: ir.Usage, citations: Any, created: int) -> None:
    if not rid:
        rid = "gen-fixed"  # an empty id gets a random one: not comparable across two calls
    resp = ir.Response(rid, "model-1", [ir.TextPart(text, citations)], stop, usage=usage)
    fast = openai_chat.encode_response(resp, created)
    assert fast == openai_chat._encode_any_response(resp, created)
    got = json.loads(fast)["usage"]
    assert got["prompt_tokens"] == usage.prompt_tokens
    assert got["total_tokens"] == usage.total_tokens
    assert got["prompt_tokens_details"] == {"cached_tokens": usage.cache_read_tokens}


@PROPS
@given(texts=st.lists(TEXT, min_size=1, max_size=6), include_usage=st.booleans())
def test_chat_text_delta_matches_the_general_chunk(texts: list[str], include_usage: bool) -> None:
    enc = openai_chat.ChunkEncoder(1700000000, include_usage)
    enc.encode(ir.MessageStart("chatcmpl-1", "m", ir.Usage()))
    for t in texts:
        assert enc.encode(ir.BlockDelta(0, "text", t)) == enc._chunk(openai_chat._Delta(content=t))


# ---- to an Anthropic upstream --------------------------------------------------------------------


@PROPS
@given(role=ROLES, text=TEXT, cache=CACHE, citations=CITATIONS)
def test_anthropic_turn_fast_path_matches_the_general_path(role: str, text: str, cache: Any,
                                                           citations: Any) -> None:
    msg = ir.Message(role, [ir.TextPart(text, citations, cache)])  # type: ignore[arg-type]
    got_role, blocks = anthropic_translate._turn_blocks(msg)
    if role not in ("system", "developer"):
        assert blocks == anthropic_translate._blocks(got_role, msg.content)
        assert got_role == ("assistant" if role == "assistant" else "user")


# ---- to an OpenAI-compatible upstream ------------------------------------------------------------


@PROPS
@given(role=ROLES, text=TEXT, name=NAME, cache=CACHE)
def test_openai_message_fast_path_matches_the_general_path(role: str, text: str, name: str | None,
                                                           cache: Any) -> None:
    msg = ir.Message(role, [ir.TextPart(text, cache_control=cache)], name)  # type: ignore[arg-type]
    general: list[dict[str, Any]] = []
    openai_translate._add_message(msg, general)
    fast = openai_translate._messages([msg])
    assert fast == general
    assert openai_translate._encode(fast) == openai_translate._encode(general)  # key order too


class _GeneralChunks(openai_translate.ChunkStream):
    """The OpenAI stream reader with its fast path off."""

    __slots__ = ()

    def _delta(self, d: Any, out: list[ir.StreamEvent]) -> None:
        self._any_delta(d, out)


_DELTA = st.fixed_dictionaries({}, optional={
    "content": st.none() | TEXT,
    "reasoning_content": st.none() | TEXT,
    "role": st.just("assistant"),
    "tool_calls": st.just([{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{}"}}]),
})


def _openai_sse(deltas: list[dict[str, Any]], finish: str | None) -> list[bytes]:
    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        data = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    out = [chunk(d) for d in deltas]
    if finish is not None:
        out.append(chunk({}, finish))
        out.append(b"data: [DONE]\n\n")
    return out


@PROPS
@given(deltas=st.lists(_DELTA, max_size=8), finish=st.none() | st.sampled_from(["stop", "length"]))
def test_openai_stream_fast_path_matches_the_general_path(deltas: list[dict[str, Any]],
                                                          finish: str | None) -> None:
    fast, general = openai_translate.ChunkStream(), _GeneralChunks()
    for c in _openai_sse(deltas, finish):
        assert fast.feed(c) == general.feed(c)
    assert fast.close() == general.close()
    assert fast.usage == general.usage


# ---- Gemini stream -------------------------------------------------------------------------------


class _GeneralGemini(gemini_translate.GeminiStream):
    """The Gemini stream reader with its fast path off."""

    __slots__ = ()

    def _chunk(self, chunk: Any, out: list[ir.StreamEvent]) -> None:
        self._any_chunk(chunk, out)


_PART = st.fixed_dictionaries({"text": TEXT}, optional={
    "thought": st.booleans(),
    "thoughtSignature": st.text(min_size=1, max_size=6, alphabet="abc"),
}) | st.just({"functionCall": {"name": "f", "args": {"a": 1}}})


@st.composite
def _gemini_chunks(draw: st.DrawFn) -> list[bytes]:
    n = draw(st.integers(min_value=1, max_value=8))
    out = []
    tokens = 0
    for i in range(n):
        data: dict[str, Any] = {"responseId": "r1", "modelVersion": "gemini-x"}
        # mostly the common chunk (one plain text part), sometimes anything
        parts = draw(st.lists(_PART, max_size=3) | st.builds(lambda t: [{"text": t}], TEXT))
        cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
        if i == n - 1 and draw(st.booleans()):
            cand["finishReason"] = "STOP"
        data["candidates"] = [cand]
        if draw(st.booleans()):
            tokens += draw(st.integers(min_value=0, max_value=3))
            data["usageMetadata"] = {"promptTokenCount": 5, "candidatesTokenCount": tokens,
                                     "totalTokenCount": 5 + tokens,
                                     "thoughtsTokenCount": draw(st.integers(min_value=0, max_value=2))}
        out.append(b"data: " + msgspec.json.encode(data) + b"\r\n\r\n")
    return out


@PROPS
@given(chunks=_gemini_chunks())
def test_gemini_stream_fast_path_matches_the_general_path(chunks: list[bytes]) -> None:
    fast, general = gemini_translate.GeminiStream(), _GeneralGemini()
    for c in chunks:
        assert fast.feed(c) == general.feed(c)
    assert fast.close() == general.close()
    assert fast.usage == general.usage


def test_gemini_text_chunks_take_the_fast_path() -> None:
    """A run of plain text chunks on the open block is one delta each, the usage updated once per move."""
    def chunk(text: str, tokens: int) -> bytes:
        data = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": tokens}}
        return b"data: " + msgspec.json.encode(data) + b"\r\n\r\n"

    s = gemini_translate.GeminiStream()
    first = s.feed(chunk("a", 1))
    assert [type(e) for e in first] == [ir.MessageStart, ir.BlockStart, ir.BlockDelta]
    assert s.feed(chunk("b", 1)) == [ir.BlockDelta(0, "text", "b")]
    assert s.feed(chunk("c", 2)) == [ir.BlockDelta(0, "text", "c"),
                                     ir.UsageUpdate(ir.Usage(input_tokens=5, output_tokens=2))]
