# cython: boundscheck=True, wraparound=True, cdivision=False
"""IR ⇄ the OpenAI Chat Completions wire, seen from the upstream side.

``gateway.dialects.openai_chat`` reads OpenAI chat *requests* and writes OpenAI chat *answers* (the
client side). A client of another dialect (Anthropic Messages, OpenAI Responses) served by an
OpenAI-compatible upstream (OpenAI, the presets, the mock) needs the reverse: an IR request written as
an OpenAI chat request, and the upstream's ``chat.completion``, ``chat.completion.chunk`` stream and
error bodies read back into the IR. Pure functions and one sans-I/O state machine (``ChunkStream``).

Request rules (IR → OpenAI chat):

- ``tool_result`` parts become ``tool`` messages (each its own, in order, before the rest of the turn's
  content); tool calls become the assistant message's ``tool_calls``; thinking parts with a signature
  travel in the ``thinking_blocks`` extension (``gateway.dialects.openai_chat``), so a conversation
  that goes back to an Anthropic upstream keeps them.
- Images: a URL as it is, base64 data as a ``data:`` URL; documents as ``file`` parts.
- ``reasoning.effort`` as ``reasoning_effort``; a token budget alone as the nearest effort word
  (``_EFFORTS``); ``stop`` as ``stop``; ``user`` as ``user``; streams ask for the usage chunk.
- ``cache_control`` marks stay on text parts (OpenAI-compatible servers ignore the field; LiteLLM-style
  proxies read it). Opaque parts of another provider are not sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from gateway import ir
from gateway._core.sse import event_data
from gateway.providers.sse_machine import DONE, FAILED, IDLE, MESSAGE, SSEMachine

__all__ = [
    "STOP_REASONS",
    "ChunkStream",
    "build_request",
    "encode_request",
    "error_from_response",
    "response_from_body",
    "usage_from_wire",
]

#: OpenAI ``finish_reason`` → IR
STOP_REASONS: Final[dict[str, ir.StopReason]] = {
    "stop": ir.StopReason.END_TURN,
    "length": ir.StopReason.MAX_TOKENS,
    "tool_calls": ir.StopReason.TOOL_USE,
    "function_call": ir.StopReason.TOOL_USE,
    "content_filter": ir.StopReason.REFUSAL,
}

#: a thinking budget (tokens) → the effort word asked of an OpenAI upstream: the first bound it fits
_EFFORTS: Final = ((2048, "low"), (8192, "medium"))

_encode: Final = msgspec.json.Encoder().encode


# ---- request -------------------------------------------------------------------------------------


def _content_part(part: ir.Part) -> dict[str, Any] | None:
    if isinstance(part, ir.TextPart):
        out: dict[str, Any] = {"type": "text", "text": part.text}
        if part.cache_control is not None:
            out["cache_control"] = part.cache_control
        return out
    if isinstance(part, ir.ImagePart):
        url = part.url if part.url is not None else f"data:{part.media_type};base64,{part.data}"
        image: dict[str, Any] = {"url": url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, ir.DocumentPart):
        if part.text is not None:
            return {"type": "text", "text": part.text}
        file: dict[str, Any] = {}
        if part.file_id is not None:
            file["file_id"] = part.file_id
        elif part.data is not None:
            file["file_data"] = f"data:{part.media_type or 'application/pdf'};base64,{part.data}"
        else:
            return {"type": "text", "text": part.url or ""}
        if part.filename or part.title:
            file["filename"] = part.filename or part.title
        return {"type": "file", "file": file}
    return None


def _content(parts: Sequence[ir.Part]) -> str | list[dict[str, Any]]:
    blocks = [b for b in map(_content_part, parts) if b is not None]
    if all(b["type"] == "text" and "cache_control" not in b for b in blocks):
        return "".join(b["text"] for b in blocks)
    return blocks


def _tool_message(part: ir.ToolResultPart) -> dict[str, Any]:
    content = _content(list(part.content))
    if part.is_error and isinstance(content, str):
        content = f"[error] {content}" if content else "[error]"
    return {"role": "tool", "tool_call_id": part.tool_call_id, "content": content}


def _messages(messages: list[ir.Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in messages:
        content = msg.content
        if len(content) == 1 and type(content[0]) is ir.TextPart and msg.role != "tool":
            part = content[0]
            if part.cache_control is None:
                # PERF: the common message, one plain text part: the string ``_add_message`` joins,
                # without its walks
                plain: dict[str, Any] = {"role": msg.role, "content": part.text}
                if msg.name is not None:
                    plain["name"] = msg.name
                out.append(plain)
                continue
        _add_message(msg, out)
    return out


def _add_message(msg: ir.Message, out: list[dict[str, Any]]) -> None:
    """One IR message of any shape as OpenAI messages (its tool results are messages of their own)."""
    results = [p for p in msg.content if isinstance(p, ir.ToolResultPart)]
    out.extend(_tool_message(p) for p in results)
    rest = [p for p in msg.content if not isinstance(p, ir.ToolResultPart)]
    if msg.role == "tool" or (results and not rest):
        return
    m: dict[str, Any] = {"role": msg.role}
    if msg.role == "assistant":
        calls = [p for p in rest if isinstance(p, ir.ToolCallPart)]
        thinking = [p for p in rest if isinstance(p, ir.ThinkingPart | ir.RedactedThinkingPart)]
        texts = [p.text for p in rest if isinstance(p, ir.TextPart)]
        m["content"] = "".join(texts) if texts or not calls else None
        if calls:
            m["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        blocks = [_thinking_block(p) for p in thinking]
        if any(b is not None for b in blocks):
            m["thinking_blocks"] = [b for b in blocks if b is not None]
    else:
        m["content"] = _content(rest)
    if msg.name is not None:
        m["name"] = msg.name
    out.append(m)


def _thinking_block(p: ir.ThinkingPart | ir.RedactedThinkingPart) -> dict[str, str] | None:
    if isinstance(p, ir.RedactedThinkingPart):
        return {"type": "redacted_thinking", "data": p.data}
    if p.signature is None:
        return None  # unsigned reasoning has no OpenAI form
    return {"type": "thinking", "thinking": p.text, "signature": p.signature}


def _tool_choice(tc: ir.ToolChoice | None) -> Any:
    if tc is None:
        return None
    if tc.mode == "named":
        return {"type": "function", "function": {"name": tc.name}}
    return tc.mode


def _effort(r: ir.Reasoning | None) -> str | None:
    if r is None:
        return None
    if r.effort is not None:
        return r.effort
    if r.budget_tokens is None:
        return None
    return next((word for bound, word in _EFFORTS if r.budget_tokens <= bound), "high")


def build_request(req: ir.Request, model: str) -> dict[str, Any]:
    """The OpenAI chat request for ``req``, sent to upstream model id ``model``."""
    body: dict[str, Any] = {"model": model, "messages": _messages(req.messages)}
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    fields = {
        "max_completion_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p,
        "seed": req.seed, "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty, "n": req.n, "parallel_tool_calls": req.parallel_tool_calls,
        "reasoning_effort": _effort(req.reasoning), "user": req.user, "metadata": req.metadata,
        "service_tier": req.service_tier,
    }
    for k, v in fields.items():  # PERF: a loop, not a generator fed to dict.update
        if v is not None:
            body[k] = v
    if req.stop:
        body["stop"] = list(req.stop)
    if req.tools:
        body["tools"] = [{"type": "function", "function": _function(t)} for t in req.tools]
        choice = _tool_choice(req.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    return body


def _function(t: ir.Tool) -> dict[str, Any]:
    f: dict[str, Any] = {"name": t.name, "parameters": t.parameters or {"type": "object", "properties": {}}}
    if t.description is not None:
        f["description"] = t.description
    if t.strict is not None:
        f["strict"] = t.strict
    return f


def encode_request(req: ir.Request, model: str) -> bytes:
    """``build_request`` as the JSON body."""
    return _encode(build_request(req, model))


# ---- answers -------------------------------------------------------------------------------------


class _PromptDetails(msgspec.Struct, frozen=True):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _Function(msgspec.Struct, frozen=True):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct, frozen=True):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct, frozen=True):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = None


class _Choice(msgspec.Struct, frozen=True):
    message: _Message = _Message()
    finish_reason: str | None = None
    index: int = 0


class _Completion(msgspec.Struct, frozen=True):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = []
    usage: _Usage | None = None


class _ChunkChoice(msgspec.Struct, frozen=True):
    delta: _Message = _Message()
    finish_reason: str | None = None
    index: int = 0


class _Chunk(msgspec.Struct, frozen=True):
    id: str = ""
    model: str = ""
    choices: list[_ChunkChoice] = []
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


class _ErrorDetail(msgspec.Struct, frozen=True):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _ErrorEnvelope(msgspec.Struct, frozen=True):
    error: _ErrorDetail


_completion_decoder: Final = msgspec.json.Decoder(_Completion)
_chunk_decoder: Final = msgspec.json.Decoder(_Chunk)
_error_decoder: Final = msgspec.json.Decoder(_ErrorEnvelope)
_error_detail_decoder: Final = msgspec.json.Decoder(_ErrorDetail)


def usage_from_wire(u: _Usage | None) -> ir.Usage:
    """OpenAI usage → IR: ``prompt_tokens`` INCLUDES the cached tokens, the IR keeps them apart."""
    if u is None:
        return ir.Usage()
    cached = (u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details is not None else 0
    reasoning = (
        (u.completion_tokens_details.reasoning_tokens or 0) if u.completion_tokens_details is not None else 0
    )
    return ir.Usage(
        input_tokens=max(u.prompt_tokens - cached, 0),
        output_tokens=u.completion_tokens,
        cache_read_tokens=cached,
        reasoning_tokens=reasoning,
    )


def _stop(reason: str | None) -> ir.StopReason | None:
    if reason is None:
        return None
    return STOP_REASONS.get(reason, ir.StopReason.END_TURN)


def _thinking_parts(m: _Message) -> list[ir.Part]:
    parts: list[ir.Part] = []
    for b in m.thinking_blocks or ():
        if b.get("type") == "thinking" and isinstance(b.get("signature"), str):
            parts.append(ir.ThinkingPart(str(b.get("thinking") or ""), b["signature"]))
        elif b.get("type") == "redacted_thinking" and isinstance(b.get("data"), str):
            parts.append(ir.RedactedThinkingPart(b["data"]))
    if not parts and m.reasoning_content:
        parts.append(ir.ThinkingPart(m.reasoning_content))
    return parts


def response_from_body(body: bytes) -> ir.Response:
    """A ``chat.completion`` body → IR (its first choice). Raises msgspec.DecodeError/ValidationError."""
    c = _completion_decoder.decode(body)
    if not c.choices:
        raise msgspec.ValidationError("the completion has no choices")
    choice = c.choices[0]
    m = choice.message
    parts = _thinking_parts(m)
    text = m.content if m.content is not None else m.refusal
    if text:
        parts.append(ir.TextPart(text))
    for call in m.tool_calls or ():
        f = call.function or _Function()
        parts.append(ir.ToolCallPart(call.id or "", f.name or "", f.arguments or "{}"))
    reason = _stop(choice.finish_reason)
    if m.refusal and not m.content:
        reason = ir.StopReason.REFUSAL
    return ir.Response(c.id, c.model, parts, reason, usage=usage_from_wire(c.usage))


def _error_kind(status: int) -> tuple[str, str, bool]:
    """(OpenAI type, code, retryable) of an upstream error answer that said none, by its status."""
    if status == 429:
        return "rate_limit_error", "rate_limit_exceeded", True
    if status == 401:
        return "authentication_error", "invalid_api_key", False
    if status == 403:
        return "permission_error", "permission_denied", False
    if status == 404:
        return "invalid_request_error", "not_found", False
    if status >= 500:
        return "server_error", "upstream_error", True
    return "invalid_request_error", "invalid_request", status == 408


def error_from_response(status: int, body: bytes) -> ir.ProviderError | None:
    """An OpenAI error answer → IR (the status kept); None when the body is not OpenAI's error shape."""
    try:
        detail = _error_decoder.decode(body).error
    except msgspec.MsgspecError:
        return None
    kind, code, retryable = _error_kind(status)
    return ir.ProviderError(
        status, detail.type or kind, str(detail.code) if detail.code is not None else code,
        detail.message, retryable, detail.type,
    )


# ---- the stream state machine --------------------------------------------------------------------
#
# Theory of operation. An OpenAI chat stream is a flat sequence of ``chat.completion.chunk`` data lines
# (``gateway.dialects.openai_chat`` has the grammar), then ``data: [DONE]``. It has no block
# boundaries: a block is whatever kind of delta is arriving. The machine opens an IR block when a kind
# of delta starts (text, reasoning, or a tool call's ``index`` not seen before) and stops the text or
# reasoning block open when another kind begins; tool blocks stay open until the end (parallel calls'
# fragments may interleave). Blocks are numbered in the order they open, as the IR wants.
#
#   input                          emits                                       state
#   first chunk                    MessageStart(id, model)                     started
#   delta.reasoning_content        [stop text/thinking] BlockStart thinking,   current = thinking
#                                  BlockDelta thinking
#   delta.thinking_blocks          signature / redacted blocks                 -
#   delta.content                  [stop thinking] BlockStart text, BlockDelta current = text
#   delta.tool_calls[k]            [stop current] BlockStart tool_call (new k) tools[k]
#                                  BlockDelta arguments
#   finish_reason                  -                                           reason kept
#   usage                          UsageUpdate                                 usage kept
#   {"error": ...}                 StreamError                                 FAILED
#   [DONE] (or the end, once a     BlockStop each open block, UsageUpdate,     DONE
#   finish_reason was seen)        MessageStop
#   the end, no finish_reason      StreamError 502                             FAILED


class ChunkStream(SSEMachine):
    """OpenAI chunk SSE bytes in, IR stream events out: ``feed(chunk)`` per body chunk, then ``close()``."""

    __slots__ = ("_current", "_next", "_reason", "_tools")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        super().__init__(max_event_bytes)
        #: the open text or thinking block: (IR index, kind), or None
        self._current: tuple[int, str] | None = None
        #: open tool blocks: OpenAI tool index → IR index
        self._tools: dict[int, int] = {}
        self._next = 0
        self._reason: str | None = None

    def _ended(self, out: list[ir.StreamEvent]) -> None:
        """No ``[DONE]``: an answer that said why it finished is complete; any other was cut."""
        if self.state in (IDLE, MESSAGE) and self._reason is not None:
            self._finish(out)
        else:
            super()._ended(out)

    def _event(self, event: bytes, out: list[ir.StreamEvent]) -> None:
        if self.state in (FAILED, DONE):
            return
        data = event_data(event)
        if not data:
            return
        if data[0] != 123:  # PERF: a chunk is a JSON object; only anything else is looked at again
            rest = data.strip()
            if not rest:
                return
            if rest == b"[DONE]":
                self._finish(out)
                return
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.MsgspecError:
            self._fail(out, "the upstream sent a malformed stream event")
            return
        if chunk.error is not None:
            self._on_error(chunk.error, out)
            return
        if self.state == IDLE:
            self.state = MESSAGE
            out.append(ir.MessageStart(chunk.id, chunk.model))
        for choice in chunk.choices[:1]:
            self._delta(choice.delta, out)
            if choice.finish_reason is not None:
                self._reason = choice.finish_reason
        if chunk.usage is not None:
            self._usage = usage_from_wire(chunk.usage)
            out.append(ir.UsageUpdate(self._usage))

    def _on_error(self, raw: dict[str, Any], out: list[ir.StreamEvent]) -> None:
        try:
            detail = _error_detail_decoder.decode(_encode(raw))
        except msgspec.MsgspecError:
            detail = _ErrorDetail("the upstream stream failed")
        err = ir.ProviderError(502, detail.type or "upstream_error",
                               str(detail.code) if detail.code is not None else "upstream_error",
                               detail.message or "the upstream stream failed", True, detail.type)
        self._fail(out, err.message, err)

    def _open(self, kind: str, out: list[ir.StreamEvent], **extra: Any) -> int:
        i = self._next
        self._next += 1
        out.append(ir.BlockStart(i, kind, **extra))  # type: ignore[arg-type]
        return i

    def _stop_current(self, out: list[ir.StreamEvent]) -> None:
        if self._current is not None:
            out.append(ir.BlockStop(self._current[0]))
            self._current = None

    def _stream_kind(self, kind: str, value: str, out: list[ir.StreamEvent]) -> None:
        """A text or thinking fragment: into the open block of its kind, else a new one."""
        cur = self._current
        if cur is None or cur[1] != kind:
            self._stop_current(out)
            cur = self._current = (self._open(kind, out), kind)
        out.append(ir.BlockDelta(cur[0], kind, value))  # type: ignore[arg-type]

    def _delta(self, d: _Message, out: list[ir.StreamEvent]) -> None:
        content = d.content
        if content and not d.reasoning_content and not d.thinking_blocks and not d.tool_calls:
            # PERF: the most common delta, text alone on the open text block: what _stream_kind would
            # emit, without the walk below
            cur = self._current
            if cur is not None and cur[1] == "text":
                out.append(ir.BlockDelta(cur[0], "text", content))
                return
        self._any_delta(d, out)

    def _any_delta(self, d: _Message, out: list[ir.StreamEvent]) -> None:
        """``_delta`` of any shape (the general path)."""
        if d.reasoning_content:
            self._stream_kind("thinking", d.reasoning_content, out)
        for b in d.thinking_blocks or ():
            if b.get("type") == "thinking" and isinstance(b.get("signature"), str) and b["signature"]:
                if self._current is None or self._current[1] != "thinking":
                    self._stop_current(out)
                    self._current = (self._open("thinking", out), "thinking")
                out.append(ir.BlockDelta(self._current[0], "signature", b["signature"]))
            elif b.get("type") == "redacted_thinking" and isinstance(b.get("data"), str):
                self._stop_current(out)
                out.append(ir.BlockStop(self._open("redacted_thinking", out, data=b["data"])))
        if d.content:
            self._stream_kind("text", d.content, out)
        for call in d.tool_calls or ():
            i = self._tools.get(call.index)
            f = call.function or _Function()
            if i is None:
                self._stop_current(out)
                i = self._open("tool_call", out, id=call.id or "", name=f.name or "")
                self._tools[call.index] = i
            if f.arguments:
                out.append(ir.BlockDelta(i, "arguments", f.arguments))

    def _finish(self, out: list[ir.StreamEvent]) -> None:
        if self.state == IDLE:
            self._fail(out, "the upstream stream ended before any answer")
            return
        self._stop_current(out)
        for i in self._tools.values():
            out.append(ir.BlockStop(i))
        self._tools.clear()
        out.append(ir.UsageUpdate(self._usage))
        out.append(ir.MessageStop(_stop(self._reason) or ir.StopReason.END_TURN))
        self.state = DONE
