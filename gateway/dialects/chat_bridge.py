"""IR ⇄ OpenAI chat, the direction ``openai_chat`` does not cover: IR request → chat request body, chat
answer → IR, chat chunk stream → IR events.

The Responses front (``gateway.responses.front``) serves ``/v1/responses`` through the engine's chat path:
the Responses request is decoded to the IR and sent on as a chat request (so keys, limits, budgets,
routing, records and every provider's translator apply unchanged), and the chat answer coming back is
decoded here to the IR and re-encoded as Responses. Pure: no I/O.

Reasoning crosses in the extension fields ``openai_chat`` documents (``reasoning_content`` and
``thinking_blocks``), so a provider's signed thinking survives the round trip.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from gateway import ir
from gateway._core.sse import SSEScanner, event_data, split_events

__all__ = ["ChunkDecoder", "encode_request", "response_from_body"]

_encode: Final = msgspec.json.Encoder().encode


def _content(parts: list[ir.Part]) -> str | list[dict[str, Any]]:
    """IR content parts as a chat message's content (a plain string when it is only text)."""
    if all(isinstance(p, ir.TextPart) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, ir.TextPart))
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, ir.TextPart):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, ir.ImagePart):
            url = p.url if p.url is not None else f"data:{p.media_type};base64,{p.data}"
            image: dict[str, Any] = {"url": url}
            if p.detail:
                image["detail"] = p.detail
            out.append({"type": "image_url", "image_url": image})
        elif isinstance(p, ir.DocumentPart):
            f: dict[str, Any] = {}
            if p.data is not None:
                f["file_data"] = f"data:{p.media_type or 'application/pdf'};base64,{p.data}"
            elif p.file_id is not None:
                f["file_id"] = p.file_id
            elif p.text is not None or p.url is not None:
                out.append({"type": "text", "text": p.text if p.text is not None else str(p.url)})
                continue
            if p.filename:
                f["filename"] = p.filename
            out.append({"type": "file", "file": f})
    return out


def _message(m: ir.Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [
            {"role": "tool", "tool_call_id": p.tool_call_id, "content": _content(list(p.content))}
            for p in m.content
            if isinstance(p, ir.ToolResultPart)
        ]
    if m.role != "assistant":
        return [{"role": m.role, "content": _content(m.content)}]
    text = [p for p in m.content if isinstance(p, ir.TextPart)]
    calls = [p for p in m.content if isinstance(p, ir.ToolCallPart)]
    thinking = [p for p in m.content if isinstance(p, ir.ThinkingPart | ir.RedactedThinkingPart)]
    out: dict[str, Any] = {"role": "assistant", "content": "".join(p.text for p in text) if text else None}
    if calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]
    blocks = [
        {"type": "redacted_thinking", "data": p.data}
        if isinstance(p, ir.RedactedThinkingPart)
        else {"type": "thinking", "thinking": p.text, "signature": p.signature}
        for p in thinking
        if isinstance(p, ir.RedactedThinkingPart) or p.signature
    ]
    if blocks:
        out["thinking_blocks"] = blocks
    return [out]


def encode_request(req: ir.Request, stream: bool) -> bytes:
    """The chat completions request for an IR request; ``stream`` asks for a stream with its usage."""
    body: dict[str, Any] = {"model": req.model, "messages": [x for m in req.messages for x in _message(m)]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.max_tokens is not None:
        body["max_completion_tokens"] = req.max_tokens
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "metadata", "service_tier"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.tools:
        tools = []
        for t in req.tools:
            fn: dict[str, Any] = {"name": t.name}
            if t.description is not None:
                fn["description"] = t.description
            if t.parameters is not None:
                fn["parameters"] = t.parameters
            if t.strict is not None:
                fn["strict"] = t.strict
            tools.append({"type": "function", "function": fn})
        body["tools"] = tools
    tc = req.tool_choice
    if tc is not None:
        body["tool_choice"] = (
            {"type": "function", "function": {"name": tc.name}} if tc.mode == "named" else tc.mode
        )
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_schema":
            schema: dict[str, Any] = {"name": rf.name or "response", "schema": rf.schema}
            if rf.strict is not None:
                schema["strict"] = rf.strict
            if rf.description is not None:
                schema["description"] = rf.description
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            body["response_format"] = {"type": rf.type}
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning_effort"] = req.reasoning.effort
    return _encode(body)


# ---- chat answer → IR ----------------------------------------------------------------------------

_STOP: Final[dict[str | None, ir.StopReason]] = {
    "stop": ir.StopReason.END_TURN,
    "length": ir.StopReason.MAX_TOKENS,
    "tool_calls": ir.StopReason.TOOL_USE,
    "function_call": ir.StopReason.TOOL_USE,
    "content_filter": ir.StopReason.REFUSAL,
}


class _Fn(msgspec.Struct, frozen=True):
    name: str | None = None
    arguments: str | None = None


class _Call(msgspec.Struct, frozen=True):
    index: int = 0
    id: str | None = None
    function: _Fn | None = None


class _Msg(msgspec.Struct, frozen=True):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = None
    tool_calls: list[_Call] | None = None


class _Choice(msgspec.Struct, frozen=True):
    message: _Msg | None = None
    delta: _Msg | None = None
    finish_reason: str | None = None


class _Cached(msgspec.Struct, frozen=True):
    cached_tokens: int | None = 0


class _Reasoned(msgspec.Struct, frozen=True):
    reasoning_tokens: int | None = 0


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _Cached | None = None
    completion_tokens_details: _Reasoned | None = None
    cache_write_tokens: int = 0


class _Completion(msgspec.Struct, frozen=True):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = []
    usage: _Usage | None = None


_completion: Final = msgspec.json.Decoder(_Completion)


def _usage(u: _Usage | None) -> ir.Usage:
    if u is None:
        return ir.Usage()
    cached = (u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0
    reasoning = (u.completion_tokens_details.reasoning_tokens or 0) if u.completion_tokens_details else 0
    written = u.cache_write_tokens
    return ir.Usage(
        max(u.prompt_tokens - cached - written, 0), u.completion_tokens, cached, written, reasoning
    )


def _thinking(blocks: list[dict[str, Any]] | None, text: str | None) -> list[ir.Part]:
    parts: list[ir.Part] = []
    for b in blocks or ():
        if b.get("type") == "redacted_thinking" and isinstance(b.get("data"), str):
            parts.append(ir.RedactedThinkingPart(b["data"]))
        elif b.get("type") == "thinking":
            parts.append(ir.ThinkingPart(str(b.get("thinking") or ""), b.get("signature") or None))
    if not parts and text:
        parts.append(ir.ThinkingPart(text))
    return parts


def response_from_body(body: bytes) -> ir.Response:
    """A ``chat.completion`` body → IR (raises msgspec errors for another shape)."""
    c = _completion.decode(body)
    choice = c.choices[0] if c.choices else _Choice()
    m = choice.message or _Msg()
    parts = _thinking(m.thinking_blocks, m.reasoning_content)
    if m.content:
        parts.append(ir.TextPart(m.content))
    elif m.refusal:
        parts.append(ir.TextPart(m.refusal))
    for call in m.tool_calls or ():
        fn = call.function or _Fn()
        parts.append(ir.ToolCallPart(call.id or "", fn.name or "", fn.arguments or "{}"))
    stop = _STOP.get(choice.finish_reason, ir.StopReason.END_TURN)
    return ir.Response(c.id, c.model, parts, stop, usage=_usage(c.usage))


# ---- chat chunks → IR events ---------------------------------------------------------------------
#
# Theory of operation. Chat chunks carry text, reasoning and tool-call fragments without block
# boundaries; the IR has blocks. The decoder opens a block when a new kind of content starts (text,
# thinking, or a tool call with a new ``index``) and closes the open one then; parallel tool calls each
# keep their block (fragments are routed by their chat ``index``), closed together at the finish. The
# finish reason is held until the stream ends, since the usage chunk comes after it; ``[DONE]`` (or
# the end of the body) gives UsageUpdate and MessageStop. An ``{"error": ...}`` line is a StreamError.


class _ErrorBody(msgspec.Struct, frozen=True):
    message: str = "the upstream stream failed"
    type: str = "server_error"
    code: str | None = None


class _Chunk(msgspec.Struct, frozen=True):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _ErrorBody | None = None


_chunk: Final = msgspec.json.Decoder(_Chunk)


class ChunkDecoder:
    """Chat chunk SSE bytes → IR stream events (``feed`` per piece of the body, ``close`` at its end)."""

    def __init__(self) -> None:
        self._scanner = SSEScanner()
        self._started = False
        self._next = 0
        #: the open text/thinking block: (kind, IR index)
        self._open: tuple[str, int] | None = None
        #: chat tool-call index → IR block index, for calls still open
        self._calls: dict[int, int] = {}
        self._stop: ir.StopReason | None = None
        self._usage = ir.Usage()
        self.done = False

    def feed(self, data: bytes) -> list[ir.StreamEvent]:
        out: list[ir.StreamEvent] = []
        try:
            ready = self._scanner.feed(data)
        except ValueError:
            return self._broken("The upstream sent a stream event over the size limit")
        for event in split_events(ready):
            payload = event_data(event)
            if self.done:
                break
            if payload is not None:
                self._event(payload, out)
        return out

    def _broken(self, message: str) -> list[ir.StreamEvent]:
        self.done = True
        return [ir.StreamError(ir.ProviderError(502, "upstream_error", "upstream_stream_error", message))]

    def close(self) -> list[ir.StreamEvent]:
        out: list[ir.StreamEvent] = []
        if not self.done:
            self._end(out)
        return out

    def _end(self, out: list[ir.StreamEvent]) -> None:
        self._close_all(out)
        out.append(ir.UsageUpdate(self._usage))
        out.append(ir.MessageStop(self._stop or ir.StopReason.END_TURN))
        self.done = True

    def _close_all(self, out: list[ir.StreamEvent]) -> None:
        if self._open is not None:
            out.append(ir.BlockStop(self._open[1]))
            self._open = None
        for i in self._calls.values():
            out.append(ir.BlockStop(i))
        self._calls.clear()

    def _block(self, kind: str, out: list[ir.StreamEvent]) -> int:
        if self._open is not None and self._open[0] == kind:
            return self._open[1]
        if self._open is not None:
            out.append(ir.BlockStop(self._open[1]))
        i = self._next
        self._next += 1
        self._open = (kind, i)
        out.append(ir.BlockStart(i, kind))  # type: ignore[arg-type]
        return i

    def _event(self, payload: bytes, out: list[ir.StreamEvent]) -> None:
        if payload.strip() == b"[DONE]":
            self._end(out)
            return
        try:
            c = _chunk.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            out += self._broken("The upstream sent a stream event that is not a chunk")
            return
        if c.error is not None:
            e = c.error
            out.append(ir.StreamError(ir.ProviderError(502, e.type, e.code, e.message)))
            self.done = True
            return
        if not self._started:
            self._started = True
            out.append(ir.MessageStart(c.id, c.model))
        if c.usage is not None:
            self._usage = _usage(c.usage)
        for choice in c.choices[:1]:
            d = choice.delta or _Msg()
            for b in d.thinking_blocks or ():
                self._thinking_block(b, out)
            if d.reasoning_content:
                out.append(ir.BlockDelta(self._block("thinking", out), "thinking", d.reasoning_content))
            if d.content:
                out.append(ir.BlockDelta(self._block("text", out), "text", d.content))
            for call in d.tool_calls or ():
                self._call(call, out)
            if choice.finish_reason is not None:
                self._stop = _STOP.get(choice.finish_reason, ir.StopReason.END_TURN)

    def _thinking_block(self, b: dict[str, Any], out: list[ir.StreamEvent]) -> None:
        if b.get("type") == "redacted_thinking" and isinstance(b.get("data"), str):
            if self._open is not None:
                out.append(ir.BlockStop(self._open[1]))
                self._open = None
            i = self._next
            self._next += 1
            out += [ir.BlockStart(i, "redacted_thinking", data=b["data"]), ir.BlockStop(i)]
        elif b.get("type") == "thinking" and b.get("signature"):
            out.append(ir.BlockDelta(self._block("thinking", out), "signature", str(b["signature"])))

    def _call(self, call: _Call, out: list[ir.StreamEvent]) -> None:
        fn = call.function or _Fn()
        i = self._calls.get(call.index)
        if i is None:
            if self._open is not None:
                out.append(ir.BlockStop(self._open[1]))
                self._open = None
            i = self._calls[call.index] = self._next
            self._next += 1
            out.append(ir.BlockStart(i, "tool_call", call.id or "", fn.name or ""))
        if fn.arguments:
            out.append(ir.BlockDelta(i, "arguments", fn.arguments))
