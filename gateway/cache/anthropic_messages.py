"""The cache's codec for the Anthropic Messages dialect (``POST /v1/messages``): answers → IR, IR → replay.

The same three things as ``gateway.cache.openai_chat`` (see its docstring and ``gateway.cache.codec``),
for the bytes a Messages client is sent: a ``message`` body, or its SSE stream. Both are read the same
way whether an Anthropic upstream answered them (pass-through: Anthropic's own bytes) or another
upstream did (translated: the gateway's ``gateway.dialects.anthropic_messages`` encoder). The replay side
is that encoder (``encode_response``, ``EventEncoder``), fed the events a whole answer spells
(``gateway.providers.bridge.response_events``), so a hit reads like a translated answer.

What is not representable is not stored (the reader returns None): a block other than text, thinking,
redacted thinking and tool use (server tools and their results), citations, a ``container``, the stop
reasons ``refusal`` and ``pause_turn``, an error. The stream assembler follows the Messages grammar::

    event                  what the assembler does
    message_start          id, model, the usage so far
    content_block_start    a block at ``index``: text, thinking, redacted_thinking (its data), tool_use
                           (id, name); any other type: not stored
    content_block_delta    text_delta / thinking_delta / signature_delta / input_json_delta appended to
                           the block; citations_delta or another: not stored
    content_block_stop     -
    message_delta          the stop reason and sequence; its (cumulative) usage over the start's
    message_stop           complete
    ping, unknown events   ignored (Anthropic may add event types)
    error                  not stored

and holds at most ``limit`` bytes of the stream: past that it gives up (the answer is too large to store).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from gateway import ir
from gateway.cache.codec import ByteCodec, SSEAssembler, Stored
from gateway.cache.keys import header_part, messages_canonical, messages_form
from gateway.dialects.anthropic_messages import EventEncoder, encode_response
from gateway.providers.bridge import response_events

__all__ = ["AnthropicMessagesCodec", "StreamAssembler", "read_whole", "replay"]

#: Anthropic stop reasons an entry may have (``refusal`` and ``pause_turn`` are not stored)
_STOP: Final[dict[str, ir.StopReason]] = {
    "end_turn": ir.StopReason.END_TURN,
    "max_tokens": ir.StopReason.MAX_TOKENS,
    "stop_sequence": ir.StopReason.STOP_SEQUENCE,
    "tool_use": ir.StopReason.TOOL_USE,
    "model_context_window_exceeded": ir.StopReason.CONTEXT_WINDOW,
}
_encode: Final = msgspec.json.Encoder().encode


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    citations: Any = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None


class _Message(msgspec.Struct):
    """A ``message`` (a whole answer, or a stream's ``message_start``), as far as the cache reads it."""

    id: str = ""
    type: str = ""
    model: str = ""
    content: list[_Block] = []
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: _Usage | None = None
    container: Any = None
    error: Any = None


class _Delta(msgspec.Struct):
    """A ``content_block_delta``'s or a ``message_delta``'s ``delta``."""

    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    message: _Message | None = None
    index: int = 0
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None


# PERF: built once
_decode_message: Final = msgspec.json.Decoder(_Message).decode
_decode_event: Final = msgspec.json.Decoder(_Event).decode


def _usage(u: _Usage | None, over: _Usage | None = None) -> ir.Usage:
    """Anthropic usage → IR (``input_tokens`` excludes the cache reads and writes, as in the IR); the
    figures ``over`` has replace ``u``'s (a stream's ``message_delta`` over its ``message_start``)."""
    def pick(name: str) -> int:
        for source in (over, u):
            value = getattr(source, name, None) if source is not None else None
            if value is not None:
                return int(value)
        return 0

    return ir.Usage(
        input_tokens=pick("input_tokens"), output_tokens=pick("output_tokens"),
        cache_read_tokens=pick("cache_read_input_tokens"),
        cache_write_tokens=pick("cache_creation_input_tokens"),
    )


def _part(b: _Block) -> ir.Part | None:
    """A whole answer's block → an IR part; None when the entry could not replay it faithfully."""
    if b.type == "text" and b.text is not None and not b.citations:
        return ir.TextPart(b.text)
    if b.type == "thinking" and b.thinking is not None:
        return ir.ThinkingPart(b.thinking, b.signature or None)  # "": none, as a stream spells it
    if b.type == "redacted_thinking" and b.data is not None:
        return ir.RedactedThinkingPart(b.data)
    if b.type == "tool_use" and b.id and b.name:
        return ir.ToolCallPart(b.id, b.name, _encode(b.input if b.input is not None else {}).decode())
    return None


def read_whole(body: bytes) -> Stored | None:
    """A ``message`` body the client was sent → (IR answer, 0); None when it cannot be stored faithfully
    (a Messages answer has no ``created``)."""
    try:
        m = _decode_message(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    stop = _STOP.get(m.stop_reason or "")
    if m.type != "message" or m.error is not None or m.container is not None or stop is None:
        return None
    parts: list[ir.Part] = []
    for b in m.content:
        p = _part(b)
        if p is None:
            return None
        parts.append(p)
    return ir.Response(m.id, m.model, parts, stop, m.stop_sequence, _usage(m.usage)), 0


class _Open:
    """A block being assembled: its kind and what its deltas carried."""

    __slots__ = ("data", "id", "kind", "name", "signature", "text")

    def __init__(self, b: _Block) -> None:
        self.kind = b.type
        self.id = b.id
        self.name = b.name
        self.data = b.data
        self.text: list[str] = [b.text or b.thinking or ""]
        self.signature: list[str] = [b.signature or ""]

    def part(self) -> ir.Part | None:
        text = "".join(self.text)
        if self.kind == "text":
            return ir.TextPart(text)
        if self.kind == "thinking":
            return ir.ThinkingPart(text, "".join(self.signature) or None)
        if self.kind == "redacted_thinking":
            return ir.RedactedThinkingPart(self.data) if self.data is not None else None
        if self.id and self.name:  # tool_use: its input arrives as JSON text
            return ir.ToolCallPart(self.id, self.name, text)
        return None


#: the delta types each block kind takes, and which of its lists they go to
_DELTA_FIELDS: Final = {
    ("text", "text_delta"): "text",
    ("thinking", "thinking_delta"): "thinking",
    ("thinking", "signature_delta"): "signature",
    ("tool_use", "input_json_delta"): "partial_json",
}
_KINDS: Final = frozenset({"text", "thinking", "redacted_thinking", "tool_use"})


class StreamAssembler(SSEAssembler):
    """The client-bound Messages SSE stream of one answer → the IR answer it spells (``result``).

    ``feed`` takes the bytes as they are sent (any split); ``result`` is None unless the stream was
    complete (``message_stop``), had no error and nothing the IR entry cannot replay."""

    __slots__ = ("_blocks", "_done", "_id", "_model", "_start_usage", "_stop", "_stop_sequence", "_usage")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._done = False
        self._id = ""
        self._model = ""
        self._blocks: dict[int, _Open] = {}
        self._start_usage: _Usage | None = None
        self._usage: _Usage | None = None
        self._stop: str | None = None
        self._stop_sequence: str | None = None

    def _drop(self) -> None:
        self._blocks = {}

    def _data(self, data: bytes) -> None:
        if self._done:  # nothing may follow message_stop
            self._give_up()
            return
        try:
            ev = _decode_event(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._give_up()
            return
        self._apply(ev)

    def _apply(self, ev: _Event) -> None:
        kind = ev.type
        if kind == "content_block_delta":
            blk = self._blocks.get(ev.index)
            d = ev.delta
            field = _DELTA_FIELDS.get((blk.kind, d.type or "")) if blk is not None and d is not None else None
            if field is None:
                self._give_up()
                return
            assert blk is not None and d is not None
            value = getattr(d, field) or ""
            (blk.signature if field == "signature" else blk.text).append(value)
        elif kind == "content_block_start":
            b = ev.content_block
            # a tool_use block starts with an empty input, its JSON then comes as deltas
            if (b is None or b.type not in _KINDS or ev.index in self._blocks or b.citations
                    or (b.type == "tool_use" and b.input)):
                self._give_up()
                return
            self._blocks[ev.index] = _Open(b)
        elif kind == "message_start" and ev.message is not None:
            m = ev.message
            self._id, self._model, self._start_usage = m.id, m.model, m.usage
        elif kind == "message_delta":
            if ev.delta is not None:
                self._stop, self._stop_sequence = ev.delta.stop_reason, ev.delta.stop_sequence
            if ev.usage is not None:
                self._usage = ev.usage
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            self._give_up()

    def result(self) -> Stored | None:
        """The assembled answer (and 0: no ``created``), or None when the stream was not a complete
        success or holds what the entry cannot replay."""
        stop = _STOP.get(self._stop or "")
        if self._cut or not self._done or stop is None:
            return None
        parts: list[ir.Part] = []
        for index in sorted(self._blocks):
            p = self._blocks[index].part()
            if p is None:
                return None
            parts.append(p)
        usage = _usage(self._start_usage, self._usage)
        return ir.Response(self._id, self._model, parts, stop, self._stop_sequence, usage), 0


def replay(resp: ir.Response, stream: bool, request_id: str = "") -> bytes:
    """The stored answer as the client asked for it: a ``message`` body, or its event stream."""
    if not stream:
        return encode_response(resp)
    encoder = EventEncoder(request_id)
    return b"".join(encoder.encode(e) for e in response_events(resp))


_VERSION: Final = b"anthropic-version"
_BETA: Final = b"anthropic-beta"


def _betas(value: bytes | None) -> bytes | None:
    """``anthropic-beta``'s values in one order (a client may list them any way)."""
    if value is None:
        return None
    return b",".join(sorted({v.strip() for v in value.split(b",") if v.strip()}))


class AnthropicMessagesCodec(ByteCodec):
    """The ``anthropic_messages`` dialect's codec (see the module docstring)."""

    name: ClassVar[str] = "anthropic_messages"
    #: its ``messages`` are role and text like OpenAI chat's (``system`` is a field of the partition)
    semantic: ClassVar[bool] = True

    def form(self, ctx: Any) -> dict[str, Any]:
        return messages_form(ctx.body)

    def canonical(self, ctx: Any) -> bytes:
        return messages_canonical(ctx.body)  # compiled, from the bytes, when no block is marked

    def headers(self, ctx: Any) -> bytes:
        """``anthropic-beta`` and ``anthropic-version``: an Anthropic upstream gets them (they are its
        default ``forward_headers``) and a beta may change the answer (a longer output, a tool's form)."""
        req = ctx.request
        return header_part(_betas(req.header(_BETA)), req.header(_VERSION))

    def read_whole(self, body: bytes) -> Stored | None:
        return read_whole(body)

    def assembler(self, limit: int) -> StreamAssembler:
        return StreamAssembler(limit)

    def replay(self, ctx: Any, resp: ir.Response, created: int) -> bytes:
        return replay(resp, ctx.stream, ctx.request_id)
