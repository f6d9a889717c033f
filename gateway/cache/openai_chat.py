"""The cache's codec for the OpenAI Chat Completions dialect: client-bound answers → IR, IR → replay.

Entries are stored dialect-neutral, as an ``ir.Response`` (``gateway.cache.phase.CacheEntry``); each
client dialect gives the cache its codec (``gateway.cache.codec``, in ``gateway.cache.phase.CODECS``):
its request's canonical form, read a whole answer it sent, assemble a stream it sent, and write an IR
answer back whole or as a stream. This is the one for ``openai_chat``; the replay side is
``gateway.dialects.openai_chat`` (``encode_response``, ``ChunkEncoder``), so a hit reads exactly like a
translated answer.

What is not representable is not stored (the reader returns None): several choices (``n`` > 1),
logprobs, a refusal, an audio answer, an error. The stream assembler follows the chunk grammar of
``gateway.dialects.openai_chat`` (role chunk, content / reasoning / tool-call fragments, finish chunk,
optional usage chunk, ``[DONE]``) and holds at most ``limit`` bytes of the stream: past that it gives up
(the answer is too large to store, and nothing more is kept).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from gateway import ir
from gateway.cache.codec import ByteCodec, SSEAssembler
from gateway.cache.keys import canonical, request_form
from gateway.dialects.openai_chat import ChunkEncoder, encode_response

__all__ = ["OpenAIChatCodec", "StreamAssembler", "read_whole", "replay"]

_STOP: Final[dict[str, ir.StopReason]] = {
    "stop": ir.StopReason.END_TURN,
    "length": ir.StopReason.MAX_TOKENS,
    "tool_calls": ir.StopReason.TOOL_USE,
    "function_call": ir.StopReason.TOOL_USE,
    "content_filter": ir.StopReason.REFUSAL,
}


# PERF: gc=False: decoded from JSON, these hold a tree and never a cycle, so the cycle collector need not
# track them (a whole answer and every chunk of a watched stream is decoded into them)
class _Details(msgspec.Struct, gc=False):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None


class _Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct, gc=False):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = None
    tool_calls: list[_ToolCall] | None = None
    refusal: str | None = None
    audio: Any = None


class _Choice(msgspec.Struct, gc=False):
    index: int = 0
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None
    logprobs: Any = None


class _Answer(msgspec.Struct, gc=False):
    """A ``chat.completion`` or ``chat.completion.chunk``, as far as the cache reads it."""

    id: str = ""
    model: str = ""
    created: int = 0
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: Any = None


# PERF: built once
_decode_answer: Final = msgspec.json.Decoder(_Answer).decode


def _usage(u: _Usage | None) -> ir.Usage:
    if u is None:
        return ir.Usage()
    cached = (u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0
    reasoning = (u.completion_tokens_details.reasoning_tokens or 0) if u.completion_tokens_details else 0
    return ir.Usage(
        input_tokens=max(u.prompt_tokens - cached, 0), output_tokens=u.completion_tokens,
        cache_read_tokens=cached, reasoning_tokens=reasoning,
    )


def _thinking(text: str, blocks: list[dict[str, Any]] | None) -> list[ir.Part]:
    """Reasoning as IR parts: the signed or redacted blocks when the answer has them, else its text."""
    parts: list[ir.Part] = []
    signed = False
    for b in blocks or ():
        if b.get("type") == "redacted_thinking" and isinstance(b.get("data"), str):
            parts.append(ir.RedactedThinkingPart(b["data"]))
        elif b.get("type") == "thinking" and isinstance(b.get("signature"), str) and not signed:
            parts.append(ir.ThinkingPart(text, b["signature"]))
            signed = True
    if text and not signed:
        parts.insert(0, ir.ThinkingPart(text))
    return parts


def read_whole(body: bytes) -> tuple[ir.Response, int] | None:
    """A ``chat.completion`` body the client was sent → (IR answer, its ``created``); None when it cannot
    be stored faithfully."""
    try:
        a = _decode_answer(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if a.error is not None or len(a.choices) != 1:
        return None
    c = a.choices[0]
    m = c.message
    if m is None or c.logprobs is not None or m.refusal is not None or m.audio is not None:
        return None
    stop = _STOP.get(c.finish_reason or "")
    if stop is None:
        return None
    parts = _thinking(m.reasoning_content or "", m.thinking_blocks)
    if m.content:
        parts.append(ir.TextPart(m.content))
    for tc in m.tool_calls or ():
        if tc.id is None or tc.function is None or tc.function.name is None:
            return None
        parts.append(ir.ToolCallPart(tc.id, tc.function.name, tc.function.arguments or ""))
    return ir.Response(a.id, a.model, parts, stop, usage=_usage(a.usage)), a.created


class StreamAssembler(SSEAssembler):
    """The client-bound SSE stream of one answer → the IR answer it spells (``result``).

    ``feed`` takes the bytes as they are sent (any split); ``result`` is None unless the stream was
    complete: a finish reason, ``[DONE]``, no error, one choice, nothing it cannot represent."""

    __slots__ = (
        "_created",
        "_done",
        "_finish",
        "_id",
        "_model",
        "_reasoning",
        "_redacted",
        "_signatures",
        "_text",
        "_tools",
        "_usage",
    )

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._done = False
        self._id = ""
        self._model = ""
        self._created = 0
        self._finish: str | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._signatures: list[str] = []
        self._redacted: list[str] = []
        #: OpenAI tool index → [id, name, argument fragments]
        self._tools: dict[int, list[Any]] = {}
        self._usage: _Usage | None = None

    def _drop(self) -> None:
        self._text = []
        self._reasoning = []
        self._tools = {}

    def _data(self, data: bytes) -> None:
        if data == b"[DONE]":
            self._done = True
            return
        if self._done:
            self._give_up()
            return
        try:
            chunk = _decode_answer(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._give_up()
            return
        self._chunk(chunk)

    def _chunk(self, c: _Answer) -> None:
        if c.error is not None:
            self._give_up()
            return
        if c.id:
            self._id = c.id
        if c.model:
            self._model = c.model
        if c.created:
            self._created = c.created
        if c.usage is not None:
            self._usage = c.usage
        for choice in c.choices:
            d = choice.delta
            if choice.index != 0 or choice.logprobs is not None or (d is not None and (d.refusal or d.audio)):
                self._give_up()
                return
            if d is not None:
                self._delta(d)
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason

    def _delta(self, d: _Message) -> None:
        if d.content:
            self._text.append(d.content)
        if d.reasoning_content:
            self._reasoning.append(d.reasoning_content)
        for b in d.thinking_blocks or ():
            if b.get("type") == "redacted_thinking" and isinstance(b.get("data"), str):
                self._redacted.append(b["data"])
            elif isinstance(b.get("signature"), str):
                self._signatures.append(b["signature"])
        for tc in d.tool_calls or ():
            slot = self._tools.get(tc.index)
            if slot is None:
                slot = self._tools[tc.index] = [tc.id, None, []]
            if tc.id and slot[0] is None:
                slot[0] = tc.id
            f = tc.function
            if f is not None:
                if f.name and slot[1] is None:
                    slot[1] = f.name
                if f.arguments:
                    slot[2].append(f.arguments)

    def result(self) -> tuple[ir.Response, int] | None:
        """The assembled answer and its ``created``, or None when the stream was not a complete success."""
        if self._cut or not self._done:
            return None
        stop = _STOP.get(self._finish or "")
        if stop is None:
            return None
        blocks: list[dict[str, Any]] = [{"type": "thinking", "signature": s} for s in self._signatures[:1]]
        blocks += [{"type": "redacted_thinking", "data": r} for r in self._redacted]
        parts = _thinking("".join(self._reasoning), blocks)
        text = "".join(self._text)
        if text:
            parts.append(ir.TextPart(text))
        for index in sorted(self._tools):
            tid, name, args = self._tools[index]
            if tid is None or name is None:
                return None
            parts.append(ir.ToolCallPart(tid, name, "".join(args)))
        return ir.Response(self._id, self._model, parts, stop, usage=_usage(self._usage)), self._created


def _events(resp: ir.Response) -> list[ir.StreamEvent]:
    """An IR answer as the stream events that spell it (what a translated stream would have carried)."""
    events: list[ir.StreamEvent] = [ir.MessageStart(resp.id, resp.model)]
    for i, p in enumerate(resp.content):
        if isinstance(p, ir.TextPart):
            events += [ir.BlockStart(i, "text"), ir.BlockDelta(i, "text", p.text), ir.BlockStop(i)]
        elif isinstance(p, ir.ThinkingPart):
            events += [ir.BlockStart(i, "thinking")]
            if p.text:
                events.append(ir.BlockDelta(i, "thinking", p.text))
            if p.signature:
                events.append(ir.BlockDelta(i, "signature", p.signature))
            events.append(ir.BlockStop(i))
        elif isinstance(p, ir.RedactedThinkingPart):
            events += [ir.BlockStart(i, "redacted_thinking", data=p.data), ir.BlockStop(i)]
        elif isinstance(p, ir.ToolCallPart):
            events += [ir.BlockStart(i, "tool_call", id=p.id, name=p.name)]
            if p.arguments:
                events.append(ir.BlockDelta(i, "arguments", p.arguments))
            events.append(ir.BlockStop(i))
    events.append(ir.UsageUpdate(resp.usage))
    events.append(ir.MessageStop(resp.stop_reason or ir.StopReason.END_TURN, resp.stop_sequence))
    return events


def replay(resp: ir.Response, created: int, stream: bool, include_usage: bool) -> bytes:
    """The stored answer as the client asked for it: a ``chat.completion`` body, or its chunk stream."""
    if not stream:
        return encode_response(resp, created)
    return ChunkEncoder(created, include_usage).encode_all(_events(resp))


class OpenAIChatCodec(ByteCodec):
    """The ``openai_chat`` dialect's codec (see the module docstring)."""

    name: ClassVar[str] = "openai_chat"
    semantic: ClassVar[bool] = True

    def form(self, ctx: Any) -> dict[str, Any]:
        return request_form(ctx.body)

    def canonical(self, ctx: Any) -> bytes:
        return canonical(ctx.body)  # compiled, from the bytes: no decoded form

    def read_whole(self, body: bytes) -> tuple[ir.Response, int] | None:
        return read_whole(body)

    def assembler(self, limit: int) -> StreamAssembler:
        return StreamAssembler(limit)

    def replay(self, ctx: Any, resp: ir.Response, created: int) -> bytes:
        return replay(resp, created, ctx.stream, ctx.include_usage)
