"""IR ⇄ Cohere API v2: chat request building, answer and SSE stream decoding, usage, errors, embed.

Pure functions and one sans-I/O state machine (``CohereStream``); the mapping tables are in
``docs/translation.md``, the tables here are the source of truth.

Request rules (IR → ``/v2/chat``):

- Messages keep their roles (``system``, ``user``, ``assistant``, ``tool``; ``developer`` is sent as
  ``system``), in place: Cohere takes a system message anywhere, so none is hoisted or rewritten.
- Tool calls go as the assistant's ``tool_calls`` (arguments as the model's JSON text), tool results as
  ``tool`` messages with their ``tool_call_id`` (ids unchanged: Cohere takes any string).
- ``tool_choice``: auto → left out (Cohere's default), none → ``NONE``, required → ``REQUIRED``, named →
  ``REQUIRED`` with that tool only (Cohere cannot name one). ``strict`` tools → ``strict_tools: true``.
- Structured output: ``json_schema`` → ``response_format: {"type": "json_object", "json_schema"}``
  (Cohere's constrained JSON), ``json_object`` → ``{"type": "json_object"}``.
- Sampling: ``top_p`` → ``p``, ``top_k`` → ``k``; ``seed`` and the penalties pass; ``n > 1`` is refused.
- Reasoning (``reasoning_effort`` or a budget) → ``thinking: {"type": "enabled", "token_budget"}``.
- Images: ``image_url`` content (https URLs and data URLs, which Cohere takes as they are). Documents as
  files are refused (400): Cohere's chat takes documents as text only.

Answers: ``text`` content → text; ``thinking`` content and the ``tool_plan`` (the model's plan before its
calls) → reasoning text, without a signature (Cohere signs none); ``citations`` have no OpenAI field and
are dropped from the client's answer (the cited text is in the content already).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from gateway import ir
from gateway._core.sse import SSEScanner, event_data, split_events
from gateway.errors import BadRequest
from gateway.providers.anthropic_translate import _thinking_budget as thinking_budget
from gateway.providers.schemas import cohere as wire

__all__ = [
    "ERROR_STATUSES",
    "FINISH_REASONS",
    "CohereStream",
    "build_request",
    "embed_request",
    "embeddings_from_body",
    "encode_request",
    "error_from_response",
    "response_from_body",
    "usage_from_wire",
]

#: Cohere ``finish_reason`` → IR (``ERROR`` and ``TIMEOUT`` are failures: see ``FAILED_FINISH``)
FINISH_REASONS: Final[dict[str, ir.StopReason]] = {
    "COMPLETE": ir.StopReason.END_TURN,
    "STOP_SEQUENCE": ir.StopReason.STOP_SEQUENCE,
    "MAX_TOKENS": ir.StopReason.MAX_TOKENS,
    "TOOL_CALL": ir.StopReason.TOOL_USE,
    "ERROR_TOXIC": ir.StopReason.REFUSAL,
    "ERROR_LIMIT": ir.StopReason.CONTEXT_WINDOW,
}
FAILED_FINISH: Final[dict[str, tuple[int, str, str]]] = {
    "ERROR": (502, "upstream_error", "upstream_error"),
    "TIMEOUT": (504, "upstream_error", "upstream_timeout"),
}

#: Cohere HTTP status → (status for the client, OpenAI error type, code, retryable). The gateway's own
#: credential (401, 498 invalid token) and account (402) are the operator's: 502.
ERROR_STATUSES: Final[dict[int, tuple[int, str, str, bool]]] = {
    400: (400, "invalid_request_error", "invalid_request", False),
    401: (502, "upstream_error", "upstream_authentication", False),
    402: (502, "upstream_error", "upstream_billing", False),
    403: (502, "upstream_error", "upstream_permission", False),
    404: (502, "upstream_error", "upstream_not_found", False),
    422: (400, "invalid_request_error", "invalid_request", False),
    429: (429, "rate_limit_error", "rate_limit_exceeded", True),
    498: (502, "upstream_error", "upstream_authentication", False),
    500: (502, "upstream_error", "upstream_error", True),
    503: (503, "server_error", "upstream_overloaded", True),
    504: (504, "upstream_error", "upstream_timeout", True),
}
_TOO_LONG: Final = ("too many tokens", "too long", "context length", "exceeds the model")

_EMPTY_SCHEMA: Final[dict[str, Any]] = {"type": "object", "properties": {}}


# ---- request -------------------------------------------------------------------------------------


def _content(parts: list[ir.Part]) -> str | list[wire.TextContent | wire.ImageContent | wire.DocumentContent]:
    out: list[wire.TextContent | wire.ImageContent | wire.DocumentContent] = []
    for p in parts:
        if isinstance(p, ir.TextPart):
            if p.text:
                out.append(wire.TextContent(p.text))
        elif isinstance(p, ir.ImagePart):
            url = p.url if p.url is not None else f"data:{p.media_type};base64,{p.data}"
            out.append(wire.ImageContent(wire.ImageURL(url, p.detail)))
        elif isinstance(p, ir.DocumentPart):
            if p.text is None:
                raise BadRequest("Cohere takes documents as text only", param="messages")
            out.append(wire.DocumentContent({"data": p.text, **({"title": p.title} if p.title else {})}))
    if all(isinstance(c, wire.TextContent) for c in out):
        return "\n".join(c.text for c in out if isinstance(c, wire.TextContent))
    return out


def _messages(messages: list[ir.Message]) -> list[wire.Message]:
    out: list[wire.Message] = []
    for m in messages:
        if m.role == "tool":
            for part in m.content:
                if isinstance(part, ir.ToolResultPart):
                    text = _content(list(part.content)) or ("error" if part.is_error else "")
                    out.append(wire.Message("tool", text or " ", tool_call_id=part.tool_call_id))
            continue
        if m.role == "assistant":
            calls = [wire.ToolCall(p.id, "function", wire.Function(p.name, p.arguments or "{}"))
                     for p in m.content if isinstance(p, ir.ToolCallPart)]
            texts = [p for p in m.content if isinstance(p, ir.TextPart)]
            content = _content(list(texts)) if texts else None
            out.append(wire.Message("assistant", content or None, tool_calls=calls or None))
            continue
        role = "system" if m.role in ("system", "developer") else "user"
        out.append(wire.Message(role, _content(m.content)))
    return out


def build_request(req: ir.Request, model: str) -> wire.Request:
    """The ``/v2/chat`` request for ``req`` to upstream model ``model``. Raises BadRequest."""
    if req.n is not None and req.n > 1:
        raise BadRequest("this model answers one choice at a time (n must be 1)", param="n")
    tools = req.tools
    tc = req.tool_choice
    choice = None
    if tools and tc is not None:
        if tc.mode == "none":
            choice = "NONE"
        elif tc.mode == "required":
            choice = "REQUIRED"
        elif tc.mode == "named":
            tools = [t for t in tools if t.name == tc.name]
            if not tools:
                raise BadRequest(f"tool_choice names {tc.name!r}, which is not in tools", param="tool_choice")
            choice = "REQUIRED"
    fmt = req.response_format
    response_format = None
    if fmt is not None and fmt.type == "json_schema":
        response_format = wire.JSONFormat("json_object", fmt.schema)
    elif fmt is not None and fmt.type == "json_object":
        response_format = wire.JSONFormat("json_object")
    budget = thinking_budget(req)
    return wire.Request(
        model=model,
        messages=_messages(req.messages),
        stream=True if req.stream else None,
        tools=[wire.Tool("function", wire.ToolDef(t.name, t.parameters or _EMPTY_SCHEMA, t.description))
               for t in tools] or None,
        strict_tools=True if any(t.strict for t in tools) else None,
        tool_choice=choice,
        response_format=response_format,
        max_tokens=req.max_tokens,
        stop_sequences=req.stop or None,
        temperature=req.temperature,
        seed=req.seed,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        k=req.top_k,
        p=req.top_p,
        thinking=wire.Thinking("enabled", budget) if budget is not None else None,
    )


def encode_request(req: ir.Request, model: str) -> bytes:
    return wire.encode(build_request(req, model))


# ---- answer --------------------------------------------------------------------------------------


def usage_from_wire(u: wire.Usage | None) -> ir.Usage:
    """Cohere usage → IR: ``tokens`` (what the model saw) when given, else ``billed_units``; cached tokens
    are a part of the input tokens."""
    if u is None:
        return ir.Usage()
    t = u.tokens or u.billed_units
    if t is None:
        return ir.Usage()
    cached = int(u.cached_tokens or 0)
    return ir.Usage(input_tokens=max(0, int(t.input_tokens) - cached), output_tokens=int(t.output_tokens),
                    cache_read_tokens=cached)


def failed_finish(reason: str) -> ir.ProviderError | None:
    f = FAILED_FINISH.get(reason)
    if f is None:
        return None
    return ir.ProviderError(f[0], f[1], f[2], f"the upstream model stopped with {reason}", retryable=True,
                            provider_type=reason)


class FailedAnswer(Exception):
    def __init__(self, error: ir.ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


def response_from_body(body: bytes, model: str) -> ir.Response:
    """A ``/v2/chat`` answer → IR. Raises msgspec errors, or FailedAnswer (``ERROR``, ``TIMEOUT``)."""
    r = wire.decode_response(body)
    failed = failed_finish(r.finish_reason)
    if failed is not None:
        raise FailedAnswer(failed)
    msg = r.message
    parts: list[ir.Part] = []
    if msg.tool_plan:
        parts.append(ir.ThinkingPart(msg.tool_plan))
    for c in msg.content or ():
        if c.type == "thinking" and c.thinking:
            parts.append(ir.ThinkingPart(c.thinking))
        elif c.type == "text" and c.text is not None:
            parts.append(ir.TextPart(c.text))
    for call in msg.tool_calls or ():
        fn = call.function or wire._OutFunction()
        parts.append(ir.ToolCallPart(call.id or "", fn.name or "", fn.arguments or "{}"))
    reason = FINISH_REASONS.get(r.finish_reason, ir.StopReason.END_TURN)
    return ir.Response(id=r.id, model=model, content=parts, stop_reason=reason,
                       usage=usage_from_wire(r.usage))


# ---- errors --------------------------------------------------------------------------------------


def error_from_response(status: int, body: bytes) -> ir.ProviderError:
    """A non-2xx Cohere answer → IR error, by its status (Cohere's body is ``{"message"}`` only)."""
    err = wire.decode_error(body)
    message = err.message if err is not None and err.message else \
        f"upstream answered {status}: {body[:200].decode('utf-8', 'replace')}"
    default = (502, "upstream_error", "upstream_error", status >= 500 or status == 408)
    out, type_, code, retryable = ERROR_STATUSES.get(status, default)
    if code == "invalid_request" and any(p in message.lower() for p in _TOO_LONG):
        code = "context_length_exceeded"
    return ir.ProviderError(out, type_, code, message, retryable, str(status))


# ---- the stream state machine --------------------------------------------------------------------
#
# Theory of operation. Cohere streams SSE events whose JSON ``type`` names them:
#
#   message-start  [tool-plan-delta*]  { content-start content-delta* content-end
#                                       | tool-call-start tool-call-delta* tool-call-end }*  message-end
#
# (citation-start / citation-end and debug anywhere: skipped). Content blocks and tool calls are
# numbered apart (each from 0); the IR numbers every block in one sequence, so each gets the next IR
# index when it starts (``_ir``: (kind, Cohere index) → IR index). The tool plan is reasoning text: its
# block opens at its first delta and closes when the first content or tool block starts.
#
#   state     event               → handler            next
#   IDLE      message-start         _on_start            MESSAGE
#   MESSAGE   tool-plan-delta       _on_plan             MESSAGE
#   MESSAGE   content-start         _on_content_start    MESSAGE
#   MESSAGE   content-delta         _on_content_delta    MESSAGE
#   MESSAGE   content-end           _on_end              MESSAGE
#   MESSAGE   tool-call-start       _on_call_start       MESSAGE
#   MESSAGE   tool-call-delta       _on_call_delta       MESSAGE
#   MESSAGE   tool-call-end         _on_end              MESSAGE
#   MESSAGE   message-end           _on_message_end      DONE
#
# A pair not in the table, a malformed event or a body that ends before ``message-end`` fails the
# stream (502); ``message-end`` with ``ERROR``/``TIMEOUT`` fails it with that error.

IDLE: Final = "IDLE"
MESSAGE: Final = "MESSAGE"
DONE: Final = "DONE"
FAILED: Final = "FAILED"

TRANSITIONS: Final[dict[tuple[str, type], tuple[str, str]]] = {
    (IDLE, wire.MessageStart): ("_on_start", MESSAGE),
    (MESSAGE, wire.ToolPlanDelta): ("_on_plan", MESSAGE),
    (MESSAGE, wire.ContentStart): ("_on_content_start", MESSAGE),
    (MESSAGE, wire.ContentDelta): ("_on_content_delta", MESSAGE),
    (MESSAGE, wire.ContentEnd): ("_on_end", MESSAGE),
    (MESSAGE, wire.ToolCallStart): ("_on_call_start", MESSAGE),
    (MESSAGE, wire.ToolCallDelta): ("_on_call_delta", MESSAGE),
    (MESSAGE, wire.ToolCallEnd): ("_on_end", MESSAGE),
    (MESSAGE, wire.MessageEnd): ("_on_message_end", DONE),
}


class _Violation(Exception):
    pass


class _Head(msgspec.Struct):
    type: str = ""


_head: Final = msgspec.json.Decoder(_Head)


class CohereStream:
    """Cohere SSE bytes in, IR stream events out: ``feed(chunk)`` per body chunk, then ``close()``."""

    __slots__ = ("_count", "_ir", "_model", "_open", "_plan", "_scanner", "_usage", "state")

    def __init__(self, model: str, max_event_bytes: int = 1 << 20) -> None:
        self._scanner = SSEScanner(max_event_bytes)
        self._model = model
        self.state = IDLE
        #: (kind, Cohere index) → IR index; open IR blocks → kind
        self._ir: dict[tuple[str, int], int] = {}
        self._open: dict[int, str] = {}
        #: the IR index of the tool plan's block while it is open
        self._plan: int | None = None
        #: IR blocks numbered so far
        self._count = 0
        self._usage = ir.Usage()

    @property
    def usage(self) -> ir.Usage:
        return self._usage

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]:
        out: list[ir.StreamEvent] = []
        try:
            data = self._scanner.feed(chunk)
        except ValueError as e:
            self._fail(out, str(e))
            return out
        if data:
            for event in split_events(data):
                self._event(event, out)
        return out

    def close(self) -> list[ir.StreamEvent]:
        out: list[ir.StreamEvent] = []
        tail = self._scanner.pending
        if tail.strip():
            self._scanner = SSEScanner(self._scanner.max_event_bytes)
            self._event(tail, out)
        if self.state in (IDLE, MESSAGE):
            self._fail(out, "the upstream stream ended before the message was complete")
        return out

    def _fail(self, out: list[ir.StreamEvent], message: str, err: ir.ProviderError | None = None) -> None:
        if self.state != FAILED:
            self.state = FAILED
            out.append(ir.StreamError(err or ir.ProviderError(502, "upstream_error", "bad_gateway", message,
                                                              retryable=True)))

    def _event(self, event: bytes, out: list[ir.StreamEvent]) -> None:
        if self.state == FAILED:
            return
        data = event_data(event)
        if data is None or not data.strip():
            return
        try:
            ev = wire.decode_event(data)
        except msgspec.ValidationError:
            try:
                known = _head.decode(data).type in _KNOWN
            except msgspec.MsgspecError:
                known = True
            if known:
                self._fail(out, "the upstream sent a malformed stream event")
            return  # an event type added later: skipped
        except msgspec.DecodeError:
            self._fail(out, "the upstream sent a stream event that is not JSON")
            return
        if isinstance(ev, wire.SKIPPED):
            return
        step = TRANSITIONS.get((self.state, type(ev)))
        if step is None:
            if self.state != DONE:
                self._fail(out, f"unexpected {type(ev).__name__} event in state {self.state}")
            return
        try:
            getattr(self, step[0])(ev, out)
        except _Violation as e:
            self._fail(out, str(e))
            return
        if self.state != FAILED:
            self.state = step[1]

    def _next(self, kind: str, index: int, out: list[ir.StreamEvent]) -> int:
        self._close_plan(out)
        if (kind, index) in self._ir:
            raise _Violation(f"{kind} {index} started twice")
        i = self._ir[(kind, index)] = self._count
        self._count += 1
        self._open[i] = kind
        return i

    def _close_plan(self, out: list[ir.StreamEvent]) -> None:
        if self._plan is not None:
            out.append(ir.BlockStop(self._plan))
            self._open.pop(self._plan, None)
            self._plan = None

    def _on_start(self, ev: wire.MessageStart, out: list[ir.StreamEvent]) -> None:
        out.append(ir.MessageStart(ev.id or "", self._model))

    def _on_plan(self, ev: wire.ToolPlanDelta, out: list[ir.StreamEvent]) -> None:
        text = ev.delta.message.tool_plan if ev.delta is not None and ev.delta.message is not None else ""
        if self._plan is None:
            if self._count:
                raise _Violation("tool plan after the content started")
            self._plan = self._count
            self._count += 1
            self._open[self._plan] = "thinking"
            out.append(ir.BlockStart(self._plan, "thinking"))
        if text:
            out.append(ir.BlockDelta(self._plan, "thinking", text))

    def _on_content_start(self, ev: wire.ContentStart, out: list[ir.StreamEvent]) -> None:
        piece = ev.delta.message.content if ev.delta and ev.delta.message else None
        thinking = piece is not None and piece.type == "thinking"
        i = self._next("content", ev.index, out)
        self._open[i] = "thinking" if thinking else "text"
        out.append(ir.BlockStart(i, "thinking" if thinking else "text"))
        value = piece.thinking if thinking and piece else piece.text if piece else None
        if value:
            out.append(ir.BlockDelta(i, "thinking" if thinking else "text", value))

    def _on_content_delta(self, ev: wire.ContentDelta, out: list[ir.StreamEvent]) -> None:
        i = self._ir.get(("content", ev.index))
        if i is None or i not in self._open:
            raise _Violation(f"content-delta for content {ev.index}, which is not open")
        piece = ev.delta.message.content if ev.delta and ev.delta.message else None
        if piece is None:
            return
        if self._open[i] == "thinking":
            if piece.thinking:
                out.append(ir.BlockDelta(i, "thinking", piece.thinking))
        elif piece.text:
            out.append(ir.BlockDelta(i, "text", piece.text))

    def _on_call_start(self, ev: wire.ToolCallStart, out: list[ir.StreamEvent]) -> None:
        call = ev.delta.message.tool_calls if ev.delta and ev.delta.message else None
        fn = call.function if call is not None and call.function is not None else wire._OutFunction()
        i = self._next("tool", ev.index, out)
        out.append(ir.BlockStart(i, "tool_call", call.id if call else "", fn.name or ""))
        if fn.arguments:
            out.append(ir.BlockDelta(i, "arguments", fn.arguments))

    def _on_call_delta(self, ev: wire.ToolCallDelta, out: list[ir.StreamEvent]) -> None:
        i = self._ir.get(("tool", ev.index))
        if i is None or i not in self._open:
            raise _Violation(f"tool-call-delta for call {ev.index}, which is not open")
        call = ev.delta.message.tool_calls if ev.delta and ev.delta.message else None
        args = call.function.arguments if call is not None and call.function is not None else None
        if args:
            out.append(ir.BlockDelta(i, "arguments", args))

    def _on_end(self, ev: wire.ContentEnd | wire.ToolCallEnd, out: list[ir.StreamEvent]) -> None:
        kind = "content" if isinstance(ev, wire.ContentEnd) else "tool"
        i = self._ir.get((kind, ev.index))
        if i is None or self._open.pop(i, None) is None:
            raise _Violation(f"end of {kind} {ev.index}, which is not open")
        out.append(ir.BlockStop(i))

    def _on_message_end(self, ev: wire.MessageEnd, out: list[ir.StreamEvent]) -> None:
        self._close_plan(out)
        for i in sorted(self._open):
            out.append(ir.BlockStop(i))
        self._open.clear()
        delta = ev.delta or wire._EndDelta()
        reason = delta.finish_reason or "COMPLETE"
        failed = failed_finish(reason)
        if failed is not None:
            self._fail(out, failed.message, failed)
            return
        if delta.usage is not None:
            self._usage = usage_from_wire(delta.usage)
            out.append(ir.UsageUpdate(self._usage))
        out.append(ir.MessageStop(FINISH_REASONS.get(reason, ir.StopReason.END_TURN)))


_KNOWN: Final = frozenset({"message-start", "content-start", "content-delta", "content-end",
                           "tool-plan-delta", "tool-call-start", "tool-call-delta", "tool-call-end",
                           "message-end"})


# ---- embed ---------------------------------------------------------------------------------------


def embed_request(model: str, texts: list[str], dimensions: int | None) -> bytes:
    body: dict[str, Any] = {"model": model, "texts": texts, "input_type": "search_document",
                            "embedding_types": ["float"]}
    if dimensions is not None:
        body["output_dimension"] = dimensions
    return wire.encode(body)


def embeddings_from_body(body: bytes, texts: list[str]) -> tuple[list[list[float]], int]:
    """(vectors, prompt tokens) of a ``/v2/embed`` answer (``meta.billed_units.input_tokens``; four
    characters a token when absent). Raises msgspec errors."""
    r = wire.embed_decoder.decode(body)
    billed = r.meta.billed_units if r.meta is not None else None
    tokens = int(billed.input_tokens) if billed is not None and billed.input_tokens else \
        sum(max(1, len(t) // 4) for t in texts)
    return r.embeddings.vectors, tokens
