"""The mock LLM in Cohere's API v2 wire format: ``gateway mock --dialect cohere``.

Serves ``POST /v2/chat`` (a ``V2ChatResponse``, or its SSE stream with ``stream: true``), ``POST
/v2/embed`` (``embedding_types: ["float"]``) and ``GET /healthz``, with the shapes of the ``cohere``
SDK's v2 types (the tests validate every body and event against them). What it says is ``mock_content``'s,
as in every dialect; the failure directives are the same, with errors in Cohere's shape (``{"id",
"message"}``).

Theory of operation
-------------------
``CohereMock.plan`` checks ``Authorization: Bearer KEY`` (with ``--api-key``; Cohere answers 401 ``invalid
api token`` otherwise), decodes the request (the fields the mock acts on), checks it as Cohere does (400),
applies the directives and builds a ``_Plan``. A turn that calls tools carries a ``tool_plan`` (one
sentence naming the tools), as Cohere's models write one. The stream is::

    message-start
    tool-plan-delta...                                   (a tool turn)
    per call: tool-call-start, tool-call-delta..., tool-call-end
    or: content-start, content-delta..., content-end     (text or the JSON document)
    message-end (finish_reason, usage: billed_units and tokens)

Finish reasons: ``MAX_TOKENS`` when the words pass ``max_tokens`` (cut there), ``STOP_SEQUENCE`` when one
of ``stop_sequences`` occurs (cut before it), ``TOOL_CALL``, else ``COMPLETE``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Final

import msgspec

from gateway.providers import mock_content
from gateway.providers.mock import MAX_WORDS as _MAX_WORDS
from gateway.providers.mock import (
    MockApp,
    MockDirectiveError,
    MockDirectives,
    MockLLM,
    _Plan,
    parse_directives,
)
from gateway.providers.mock import _embedding as embedding_for
from gateway.providers.mock import _split_words as split_words
from gateway.providers.mock import _words_for as words_for

if TYPE_CHECKING:
    from gateway.app import Request

__all__ = ["CohereMock", "CohereMockApp"]

_JSON: Final = "application/json"
_SSE: Final = "text/event-stream"
_MESSAGES: Final[dict[int, str]] = {
    400: "invalid request", 401: "invalid api token", 402: "Please add or update your payment method",
    404: "model not found", 422: "unprocessable entity",
    429: "You are using a Trial key, which is limited to 10 API calls / minute.",
    500: "internal server error", 503: "service unavailable", 504: "gateway timeout",
}


class _Message(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    tool_plan: str | None = None


class _Function(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None
    description: str | None = None


class _Tool(msgspec.Struct):
    type: str
    function: _Function


class _Format(msgspec.Struct):
    type: str
    json_schema: dict[str, Any] | None = None


class _Request(msgspec.Struct):
    model: str
    messages: list[_Message]
    stream: bool | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | None = None
    response_format: _Format | None = None
    max_tokens: int | None = None
    stop_sequences: list[str] | None = None


_decode_request = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.Encoder().encode


class _Invalid(Exception):
    pass


def _text(m: _Message) -> str:
    if isinstance(m.content, str):
        return m.content
    return "\n".join(str(c.get("text", "")) for c in m.content or [] if isinstance(c, dict))


def _check(req: _Request) -> None:
    if not req.model:
        raise _Invalid("model must not be empty")
    if not req.messages:
        raise _Invalid("messages must not be empty")
    called: dict[str, str] = {}
    for i, m in enumerate(req.messages):
        if m.role not in ("system", "user", "assistant", "tool"):
            raise _Invalid(f"invalid role {m.role!r} at messages[{i}]")
        for call in m.tool_calls or []:
            called[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
        if m.role == "tool" and m.tool_call_id not in called:
            raise _Invalid(f"messages[{i}]: tool_call_id {m.tool_call_id!r} does not match a tool call")
    if req.tool_choice is not None:
        if req.tool_choice not in ("REQUIRED", "NONE"):
            raise _Invalid(f"invalid tool_choice {req.tool_choice!r}: must be REQUIRED or NONE")
        if not req.tools:
            raise _Invalid("tool_choice requires tools")
    if req.max_tokens is not None and req.max_tokens < 1:
        raise _Invalid("max_tokens must be at least 1")


def _sse(data: dict[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + _encode(data) + b"\n\n"


class CohereMock:
    """Plans answers to Cohere API v2 requests (see the module docstring)."""

    def __init__(self, llm: MockLLM, api_key: str | None = None) -> None:
        self.llm = llm
        self.api_key = api_key

    def error(self, status: int, message: str | None = None) -> _Plan:
        body = _encode({"id": str(uuid.uuid4()), "message": message or _MESSAGES.get(status, "error")})
        headers = [("content-type", _JSON)]
        if status == 429:
            headers.append(("retry-after", "1"))
        return _Plan(status, headers, (body,), (False,))

    def plan(self, request: Request) -> _Plan:
        if request.path == "/healthz":
            return _Plan(200, [("content-type", _JSON)], (b'{"status":"ok"}',), (False,))
        auth = request.header(b"authorization")
        if auth is None or not auth.startswith(b"Bearer ") or (
                self.api_key is not None and auth[7:].decode("latin-1") != self.api_key):
            return self.error(401, "invalid api token" if auth else "no api key supplied")
        if request.path not in ("/v2/chat", "/v2/embed"):
            return self.error(404, f"{request.path} not found")
        if request.method != "POST":
            return self.error(405, f"Method {request.method} not allowed")
        x_mock = request.header(b"x-mock")
        header = None if x_mock is None else x_mock.decode("latin-1")
        if request.path == "/v2/embed":
            return self._embed(request.body, header)
        return self._chat(request.body, header)

    def _directives(self, header: str | None, text: str) -> MockDirectives:
        d = parse_directives(header, require_prefix=False) if header else MockDirectives()
        return d.merged(parse_directives(text))

    def _chat(self, body: bytes, header: str | None) -> _Plan:
        try:
            req = _decode_request(body)
            _check(req)
        except (msgspec.ValidationError, _Invalid) as exc:
            return self.error(400, str(exc))
        except msgspec.DecodeError:
            return self.error(400, "invalid request: the body is not valid JSON")
        texts = [_text(m) for m in req.messages]
        try:
            d = self._directives(header, texts[-1])
        except MockDirectiveError as exc:
            return self.error(400, str(exc))
        if d.status is not None and d.status >= 400:
            return self.llm.timed(self.error(d.status), d)
        answer = self._answer(req, texts)
        prompt = max(1, sum(map(len, texts)) // 4 + 4 * len(texts))
        # billed units leave out the tokens Cohere adds around the prompt; ``tokens`` counts them
        usage = {"billed_units": {"input_tokens": prompt, "output_tokens": answer["tokens"]},
                 "tokens": {"input_tokens": prompt + 7, "output_tokens": answer["tokens"]}}
        message_id = str(uuid.uuid4())
        if not req.stream:
            if d.garbage:
                garbage = _Plan(200, [("content-type", _JSON)], (b'{"id": <<garbage>>',), (False,))
                return self.llm.timed(garbage, d)
            message: dict[str, Any] = {"role": "assistant"}
            if answer["calls"]:
                message["tool_plan"] = answer["plan"]
                message["tool_calls"] = answer["calls"]
            else:
                message["content"] = [{"type": "text", "text": answer["text"]}]
            out = {"id": message_id, "finish_reason": answer["finish"], "message": message, "usage": usage}
            return self.llm.timed(_Plan(200, [("content-type", _JSON)], (_encode(out),), (False,)), d)
        events = self._events(message_id, answer, usage, d.chunks or self.llm.config.stream_chunks)
        if d.garbage:
            events.insert(1, b"event: content-delta\ndata: {<<mock garbage>>\n\n")
        return self.llm.timed(_Plan(200, [("content-type", _SSE), ("cache-control", "no-cache")],
                                    tuple(events), (False,) * len(events), stream=True), d)

    def _answer(self, req: _Request, texts: list[str]) -> dict[str, Any]:
        last = req.messages[-1]
        result = None
        if last.role == "tool":
            name = None
            for m in req.messages:
                for call in m.tool_calls or []:
                    if call.get("id") == last.tool_call_id:
                        name = (call.get("function") or {}).get("name")
            result = (name, texts[-1])
        choice = {"REQUIRED": "required", "NONE": "none"}.get(req.tool_choice or "", "auto")
        fmt = req.response_format
        schema = (fmt.json_schema or {"type": "object"}) if fmt is not None and fmt.json_schema is not None \
            else None
        tools = [mock_content.ToolSpec(t.function.name, t.function.parameters) for t in req.tools or []]
        turn = mock_content.decide(
            seed="\n".join(texts), last_user=texts[-1] if last.role == "user" else None, tools=tools,
            choice=choice, parallel=True, tool_result=result, schema=schema,
            json_mode=fmt is not None and fmt.type == "json_object", id_prefix="call_",
        )
        if turn is not None and turn.kind == "tools":
            calls = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                     for c in turn.calls]
            plan = "I will call " + " and ".join(c.name for c in turn.calls) + "."
            return {"calls": calls, "plan": plan, "text": "", "finish": "TOOL_CALL",
                    "tokens": sum(max(1, len(c.arguments) // 4) for c in turn.calls)}
        if turn is not None:
            return {"calls": [], "text": turn.text, "finish": "COMPLETE",
                    "tokens": max(1, len(turn.text) // 4)}
        users = [t for m, t in zip(req.messages, texts, strict=True) if m.role == "user"]
        user = users[-1] if users else texts[-1]
        n, finish = min(self.llm.config.completion_words, _MAX_WORDS), "COMPLETE"
        if req.max_tokens is not None and n > req.max_tokens:
            n, finish = req.max_tokens, "MAX_TOKENS"
        text = " ".join(words_for(user, n))
        for s in req.stop_sequences or []:
            at = text.find(s) if s else -1
            if at >= 0:
                text, finish = text[:at], "STOP_SEQUENCE"
        return {"calls": [], "text": text, "finish": finish, "tokens": len(text.split())}

    def _events(self, message_id: str, answer: dict[str, Any], usage: dict[str, Any],
                chunks: int) -> list[bytes]:
        out = [_sse({"type": "message-start", "id": message_id, "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}})]
        if answer["calls"]:
            for piece in split_words(answer["plan"].split(" "), chunks):
                out.append(_sse({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": piece}}}))
            for i, call in enumerate(answer["calls"]):
                start = {"id": call["id"], "type": "function",
                         "function": {"name": call["function"]["name"], "arguments": ""}}
                out.append(_sse({"type": "tool-call-start", "index": i,
                                 "delta": {"message": {"tool_calls": start}}}))
                for piece in mock_content.json_fragments(call["function"]["arguments"], chunks):
                    out.append(_sse({"type": "tool-call-delta", "index": i, "delta": {"message": {
                        "tool_calls": {"function": {"arguments": piece}}}}}))
                out.append(_sse({"type": "tool-call-end", "index": i}))
        else:
            text = answer["text"]
            pieces = mock_content.json_fragments(text, chunks) if text.startswith(("{", "[")) \
                else split_words(text.split(" "), chunks)
            out.append(_sse({"type": "content-start", "index": 0,
                             "delta": {"message": {"content": {"type": "text", "text": ""}}}}))
            for piece in pieces:
                if piece:
                    out.append(_sse({"type": "content-delta", "index": 0,
                                     "delta": {"message": {"content": {"text": piece}}}}))
            out.append(_sse({"type": "content-end", "index": 0}))
        end = {"finish_reason": answer["finish"], "usage": usage}
        out.append(_sse({"type": "message-end", "delta": end}))
        return out

    def _embed(self, body: bytes, header: str | None) -> _Plan:
        try:
            req = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return self.error(400, "invalid request: the body is not valid JSON")
        texts = req.get("texts") if isinstance(req, dict) else None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return self.error(400, "invalid request: texts must be a non-empty list of strings")
        if not isinstance(req.get("model"), str) or not isinstance(req.get("input_type"), str):
            return self.error(400, "invalid request: model and input_type are required")
        try:
            d = parse_directives(header, require_prefix=False) if header else MockDirectives()
            d = d.merged(parse_directives(texts[0]))
        except MockDirectiveError as exc:
            return self.error(400, str(exc))
        if d.status is not None and d.status >= 400:
            return self.llm.timed(self.error(d.status), d)
        size = int(req.get("output_dimension") or self.llm.config.embedding_dimensions)
        out = {"id": str(uuid.uuid4()), "response_type": "embeddings_by_type", "texts": texts,
               "embeddings": {"float": [embedding_for(t, size)[0] for t in texts]},
               "meta": {"api_version": {"version": "2"},
                        "billed_units": {"input_tokens": sum(max(1, len(t) // 4) for t in texts)}}}
        return self.llm.timed(_Plan(200, [("content-type", _JSON)], (_encode(out),), (False,)), d)


class CohereMockApp(MockApp):
    """``MockApp`` answering in Cohere's API v2 wire format."""

    def __init__(self, config: Any = None, *, api_key: str | None = None) -> None:
        super().__init__(config)
        self.cohere = CohereMock(self.llm, api_key)

    def _plan_for(self, request: Request) -> _Plan:
        return self.cohere.plan(request)
