"""The mock LLM in Anthropic's wire format: ``gateway mock --dialect anthropic``.

Serves ``POST /v1/messages`` (a ``message`` object, or the SSE stream with ``stream: true``),
``POST /v1/messages/count_tokens``, ``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /healthz``, with
the shapes of the official ``anthropic`` SDK's types (the tests validate every body and event against
them). What the mock says (text, schema-valid JSON, tool calls, replies to tool results) is decided by
``mock_content`` exactly as in the OpenAI dialect; the failure directives (``!mock ...`` / ``x-mock``)
are the same too, with errors in Anthropic's shape.

Theory of operation
-------------------
``AnthropicMock.plan`` checks the head (when the mock has a key: ``x-api-key`` or ``Authorization:
Bearer``, as the SDK sends it since 2026; ``anthropic-version`` always: Anthropic answers 400 without it
or with a version it does not know), decodes the request (only the fields the mock acts on),
applies the directives, and builds a ``_Plan`` (``mock.py``) holding the final bytes: the answer has a
fresh ``msg_`` id, so nothing is cached or templated. The stream is::

    message_start (input and cache usage, output_tokens 1)
    per block: content_block_start, [ping after the first], content_block_delta..., content_block_stop
    message_delta (stop_reason, stop_sequence, cumulative usage)
    message_stop

Blocks, in order: a ``thinking`` block when ``thinking: {type: enabled}`` (deterministic text and a
signature derived from it), then the turn: a ``text`` block (words, the JSON document of structured
output, or the reply to a tool result) or one ``tool_use`` block per call.

Cues in the last user message (besides ``!tool``, see ``mock_content``): ``!refuse`` answers with no
content and ``stop_reason: "refusal"``; ``!cache read`` reports the cached prefix as read instead of
written. The cached prefix is every token up to and including the last block marked ``cache_control``
(tools, then system, then messages), so a request without ``cache_control`` reports zero for both.

Stop reasons: ``max_tokens`` when the words (plus thinking) would pass ``max_tokens`` (the text is cut
there), ``stop_sequence`` when one of ``stop_sequences`` occurs in the text (cut before it),
``tool_use``, ``refusal``, else ``end_turn``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any, Final

import msgspec

from gateway.providers import mock_content
from gateway.providers.mock import MAX_WORDS as _MAX_WORDS
from gateway.providers.mock import (
    MODELS_CREATED,
    MockApp,
    MockDirectiveError,
    MockDirectives,
    MockLLM,
    _Plan,
    parse_directives,
)
from gateway.providers.mock import _split_words as split_words
from gateway.providers.mock import _words_for as words_for

if TYPE_CHECKING:
    from gateway.app import Request

__all__ = ["ANTHROPIC_VERSIONS", "AnthropicMock", "AnthropicMockApp"]

#: the ``anthropic-version`` values Anthropic accepts (the SDK of 2026-10 sends the newest)
ANTHROPIC_VERSIONS: Final = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})
#: minimum thinking budget Anthropic accepts
_MIN_BUDGET: Final = 1024
#: words of a thinking block
_THINKING_WORDS: Final = 16
#: the figures of the ``anthropic-ratelimit-*`` headers on every answer
_RATE_LIMIT: Final = {"requests": 4000, "tokens": 400000, "input-tokens": 300000, "output-tokens": 100000}

_JSON: Final = "application/json"
_SIGNATURE_MARK: Final = b"\x8amock-sig\x01"
_TOOL_ID: Final = re.compile(r"^[a-zA-Z0-9_-]+$")
_SSE: Final = "text/event-stream; charset=utf-8"
_GARBAGE_BODY: Final = b'{"id": "msg_mock", "type": <<mock garbage: this is not JSON>>'
_GARBAGE_EVENT: Final = b"event: content_block_delta\ndata: {<<mock garbage: this is not JSON>>\n\n"

_ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# --- request wire types: the fields the mock acts on ----------------------------------------------------


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None
    cache_control: dict[str, Any] | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None


class _Message(msgspec.Struct):
    role: str
    content: str | list[_Block]


class _Tool(msgspec.Struct):
    name: str
    input_schema: dict[str, Any] | None = None
    description: str | None = None
    cache_control: dict[str, Any] | None = None


class _ToolChoice(msgspec.Struct):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _Thinking(msgspec.Struct):
    type: str
    budget_tokens: int | None = None


class _Format(msgspec.Struct):
    type: str
    schema: dict[str, Any] | None = None


class _OutputConfig(msgspec.Struct):
    format: _Format | None = None


class _Request(msgspec.Struct):
    model: str
    messages: list[_Message]
    max_tokens: int | None = None
    system: str | list[_Block] | None = None
    stop_sequences: list[str] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    thinking: _Thinking | None = None
    output_config: _OutputConfig | None = None
    #: the structured-outputs beta's name for ``output_config.format``
    output_format: _Format | None = None
    stream: bool | None = None


_decode_request = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.Encoder().encode


class _Invalid(Exception):
    """A request Anthropic would refuse: 400 ``invalid_request_error`` with this message."""


# --- helpers -------------------------------------------------------------------------------------------


def _block_text(block: _Block) -> str:
    if block.text is not None:
        return block.text
    if isinstance(block.content, str):
        return block.content
    if isinstance(block.content, list):
        return "\n".join(str(b.get("text", "")) for b in block.content if isinstance(b, dict))
    return ""


def _blocks(content: str | list[_Block]) -> list[_Block]:
    return [_Block("text", text=content)] if isinstance(content, str) else content


def _text_of(content: str | list[_Block]) -> str:
    return "\n".join(_block_text(b) for b in _blocks(content) if b.type in ("text", "tool_result"))


def _cue(text: str, word: str) -> bool:
    return word in text.split()


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encode(data) + b"\n\n"


def signature_for(thinking: str) -> str:
    """The deterministic signature of a thinking block (opaque base64, like Anthropic's): a fixed mark and
    a digest of the text, so a block sent back can be verified."""
    digest = hashlib.blake2b(b"mock-thinking:" + thinking.encode("utf-8", "surrogatepass"), digest_size=40)
    return base64.b64encode(_SIGNATURE_MARK + digest.digest()).decode()


def signature_valid(thinking: str, signature: str) -> bool:
    """Whether ``signature`` is one the mock gave ``thinking``; a signature-only block (empty text, as
    with omitted thinking) needs the mark only."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        return False
    if not raw.startswith(_SIGNATURE_MARK):
        return False
    return not thinking or signature == signature_for(thinking)


class _Usage(msgspec.Struct):
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cache_1h: bool

    def wire(self, output_tokens: int | None = None) -> dict[str, Any]:
        write = self.cache_creation_input_tokens
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 0 if self.cache_1h else write,
                "ephemeral_1h_input_tokens": write if self.cache_1h else 0,
            },
            "output_tokens": self.output_tokens if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }


def _prompt_usage(req: _Request) -> tuple[int, int, bool]:
    """(prompt tokens, tokens of the cached prefix, whether that prefix asked for the 1h TTL)."""
    total = 0
    cached = 0
    one_hour = False
    for tool in req.tools or ():
        total += len(tool.name) + len(tool.description or "") + len(_encode(tool.input_schema or {}))
        if tool.cache_control is not None:
            cached, one_hour = total, tool.cache_control.get("ttl") == "1h"
    system = _blocks(req.system) if req.system is not None else []
    for block in system:
        total += len(_block_text(block))
        if block.cache_control is not None:
            cached, one_hour = total, block.cache_control.get("ttl") == "1h"
    for message in req.messages:
        total += 16  # 4 tokens per message, as the OpenAI dialect counts
        for block in _blocks(message.content):
            total += len(_block_text(block)) + (len(block.name or ""))
            if block.cache_control is not None:
                cached, one_hour = total, block.cache_control.get("ttl") == "1h"
    return max(1, total // 4), cached // 4, one_hour


def _tool_result(req: _Request) -> tuple[str | None, str] | None:
    last = req.messages[-1]
    if last.role != "user":
        return None
    results = [b for b in _blocks(last.content) if b.type == "tool_result"]
    if not results:
        return None
    wanted = results[-1].tool_use_id
    name = None
    for message in reversed(req.messages[:-1]):
        for block in _blocks(message.content):
            if block.type == "tool_use" and block.id == wanted:
                name = block.name
    return name, _block_text(results[-1])


def _choice(req: _Request) -> tuple[str, bool]:
    tc = req.tool_choice
    if tc is None:
        return "auto", True
    parallel = not tc.disable_parallel_tool_use
    if tc.type == "any":
        return "required", parallel
    if tc.type == "tool":
        return tc.name or "", parallel
    return ("none" if tc.type == "none" else "auto"), parallel


def _check(req: _Request, count_only: bool) -> None:
    if not req.messages:
        raise _Invalid("messages: at least one message is required")
    if count_only:
        return
    if req.max_tokens is None:
        raise _Invalid("max_tokens: Field required")
    if req.max_tokens < 1:
        raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    th = req.thinking
    if th is not None and th.type == "enabled":
        if th.budget_tokens is None or th.budget_tokens < _MIN_BUDGET:
            raise _Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to "
                           f"{_MIN_BUDGET}")
        if req.max_tokens <= th.budget_tokens:
            raise _Invalid("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                           "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking")
        if req.tool_choice is not None and req.tool_choice.type in ("any", "tool"):
            raise _Invalid("Thinking may not be enabled when tool_choice forces tool use.")
    for tool in req.tools or ():
        if not tool.name:
            raise _Invalid("tools.0.name: String should have at least 1 character")
    if req.tool_choice is not None and req.tool_choice.type == "tool":
        if req.tool_choice.name not in {t.name for t in req.tools or ()}:
            raise _Invalid(f"Tool '{req.tool_choice.name}' not found in provided tools")
    _check_history(req, th is not None and th.type == "enabled")


def _check_history(req: _Request, thinking: bool) -> None:
    """What Anthropic verifies in the turns sent back: thinking signatures, tool-use ids and their results,
    and, with thinking on, a thinking block first in the assistant turn whose tool calls are answered."""
    previous: list[_Block] = []
    for i, message in enumerate(req.messages):
        blocks = _blocks(message.content)
        for j, block in enumerate(blocks):
            where = f"messages.{i}.content.{j}"
            if block.type == "thinking" and not signature_valid(block.thinking or "", block.signature or ""):
                raise _Invalid(f"{where}: Invalid `signature` in `thinking` block")
            if block.type == "tool_use" and not _TOOL_ID.match(block.id or ""):
                raise _Invalid(f"{where}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        results = [b.tool_use_id for b in blocks if b.type == "tool_result"]
        if results:
            asked = {b.id for b in previous if b.type == "tool_use"}
            unknown = [r for r in results if r not in asked]
            if unknown:
                raise _Invalid(f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` "
                               f"blocks: {unknown[0]}. Each `tool_result` block must have a corresponding "
                               "`tool_use` block in the previous message.")
            if thinking and i == len(req.messages) - 1 and previous and \
                    previous[0].type not in ("thinking", "redacted_thinking"):
                raise _Invalid(f"messages.{i - 1}.content.0.type: Expected `thinking` or "
                               f"`redacted_thinking`, but found `{previous[0].type}`. When `thinking` is "
                               "enabled, a final `assistant` message must start with a thinking block.")
        previous = blocks


# --- the answer ---------------------------------------------------------------------------------------


class _Answer(msgspec.Struct):
    """The content blocks (wire dicts, complete), the stop reason and sequence, the output tokens."""

    blocks: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


def _thinking_block(seed: str) -> dict[str, Any]:
    text = "Considering the request: " + " ".join(words_for("thinking:" + seed, _THINKING_WORDS))
    return {"type": "thinking", "thinking": text, "signature": signature_for(text)}


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s) if s else -1
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return (text, None) if best is None else (text[:best[0]], best[1])


def _answer(req: _Request, words_default: int) -> _Answer:
    texts = [_text_of(m.content) for m in req.messages]
    last_user = texts[-1] if req.messages[-1].role == "user" else None
    if last_user is not None and _cue(last_user, "!refuse"):
        return _Answer([], "refusal", None, 0)
    assert req.max_tokens is not None
    blocks: list[dict[str, Any]] = []
    budget = req.max_tokens
    out_tokens = 0
    seed = "\n".join(texts)
    if req.thinking is not None and req.thinking.type == "enabled":
        block = _thinking_block(seed)
        blocks.append(block)
        out_tokens += len(block["thinking"].split())
        budget -= out_tokens
    fmt = req.output_config.format if req.output_config is not None else None
    fmt = fmt or req.output_format
    tools = [mock_content.ToolSpec(t.name, t.input_schema) for t in req.tools or ()]
    choice, parallel = _choice(req)
    has_result = _tool_result(req)
    turn = mock_content.decide(
        seed=seed, last_user=None if has_result is not None else last_user, tools=tools, choice=choice,
        parallel=parallel, tool_result=has_result,
        schema=(fmt.schema or {"type": "object"}) if fmt is not None and fmt.type == "json_schema" else None,
        json_mode=False, id_prefix="toolu_01",
    )
    if turn is not None and turn.kind == "tools":
        for call in turn.calls:
            blocks.append({"type": "tool_use", "id": call.id, "name": call.name,
                           "input": msgspec.json.decode(call.arguments)})
            out_tokens += max(1, len(call.arguments) // 4)
        return _Answer(blocks, "tool_use", None, out_tokens)
    if turn is not None:
        blocks.append({"type": "text", "text": turn.text})
        return _Answer(blocks, "end_turn", None, out_tokens + max(1, len(turn.text) // 4))
    user = next((t for m, t in zip(reversed(req.messages), reversed(texts), strict=True) if m.role == "user"),
                texts[-1])
    n = min(words_default, _MAX_WORDS)
    stop_reason = "end_turn"
    if n > budget:
        n, stop_reason = max(0, budget), "max_tokens"
    text = " ".join(words_for(user, n))
    text, sequence = _cut_at_stop(text, req.stop_sequences or [])
    if sequence is not None:
        stop_reason = "stop_sequence"
    blocks.append({"type": "text", "text": text})
    return _Answer(blocks, stop_reason, sequence, out_tokens + len(text.split()))


# --- the mock ------------------------------------------------------------------------------------------


def _error_body(type_: str, message: str, request_id: str) -> bytes:
    return _encode({"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id})


class AnthropicMock:
    """Plans answers to Anthropic Messages API requests (see the module docstring)."""

    def __init__(self, llm: MockLLM, api_key: str | None = None) -> None:
        self.llm = llm
        self.api_key = api_key
        self._token = os.urandom(5).hex()
        self._ids = itertools.count(1)
        self._models = [
            {"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
             "created_at": _rfc3339(MODELS_CREATED)}
            for m in llm.config.models
        ]

    # -- plumbing --------------------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}{self._token}{next(self._ids):012x}"

    def _headers(self, request_id: str, content_type: str = _JSON) -> list[tuple[str, str]]:
        reset = _rfc3339(time.time() + 60)
        headers = [("content-type", content_type), ("request-id", request_id),
                   ("anthropic-organization-id", "00000000-0000-4000-8000-000000000000")]
        for kind, limit in _RATE_LIMIT.items():
            headers += [(f"anthropic-ratelimit-{kind}-limit", str(limit)),
                        (f"anthropic-ratelimit-{kind}-remaining", str(limit - 1)),
                        (f"anthropic-ratelimit-{kind}-reset", reset)]
        return headers

    def error(self, status: int, message: str, type_: str | None = None,
              extra: list[tuple[str, str]] | None = None) -> _Plan:
        """An error in Anthropic's shape."""
        request_id = self._id("req_01")
        kind = type_ or _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        headers = [("content-type", _JSON), ("request-id", request_id), *(extra or [])]
        if kind == "overloaded_error":
            headers.append(("x-should-retry", "true"))
        return _Plan(status, headers, (_error_body(kind, message, request_id),), (False,))

    def _injected(self, d: MockDirectives) -> _Plan | None:
        if d.status is None or d.status < 400:
            return None
        status = d.status
        retry = d.retry_after if d.retry_after is not None else 1.0 if status == 429 else None
        extra: list[tuple[str, str]] = []
        if retry is not None:
            extra.append(("retry-after", str(math.ceil(retry))))
        if status == 429:
            extra += [("anthropic-ratelimit-requests-limit", str(_RATE_LIMIT["requests"])),
                      ("anthropic-ratelimit-requests-remaining", "0"),
                      ("anthropic-ratelimit-requests-reset", _rfc3339(time.time() + (retry or 1.0)))]
        message = "Overloaded" if status == 529 else f"mock: injected HTTP {status}"
        return self.error(status, message, None, extra)

    # -- entry point -----------------------------------------------------------------------------------

    def plan(self, request: Request) -> _Plan:
        """The plan for one HTTP request."""
        path, method = request.path, request.method
        if path == "/healthz":
            return _Plan(200, [("content-type", _JSON)], (b'{"status":"ok"}',), (False,))
        auth = self._auth(request)
        if auth is not None:
            return auth
        if path in ("/v1/messages", "/v1/messages/count_tokens"):
            if method != "POST":
                return self.error(405, f"Method {method} not allowed", "invalid_request_error",
                                  [("allow", "POST")])
            version = request.header(b"anthropic-version")
            if version is None:
                return self.error(400, "anthropic-version: header is required")
            if version.decode("latin-1") not in ANTHROPIC_VERSIONS:
                shown = version.decode("latin-1")
                return self.error(400, f"anthropic-version: {shown!r} is not a valid version")
            x_mock = request.header(b"x-mock")
            return self._messages(request.body, None if x_mock is None else x_mock.decode("latin-1"),
                                  count_only=path.endswith("count_tokens"))
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method != "GET":
                return self.error(405, f"Method {method} not allowed", "invalid_request_error",
                                  [("allow", "GET")])
            return self._model_list() if path == "/v1/models" else self._model(path[len("/v1/models/"):])
        return self.error(404, "Not Found", "not_found_error")

    def _auth(self, request: Request) -> _Plan | None:
        if self.api_key is None:
            return None
        key = request.header(b"x-api-key")
        bearer = request.header(b"authorization")
        if key is None and bearer is None:
            return self.error(401, "x-api-key header is required")
        if key is not None and key.decode("latin-1") == self.api_key:
            return None
        if bearer is not None and bearer.decode("latin-1") == f"Bearer {self.api_key}":
            return None
        return self.error(401, "invalid x-api-key")

    def _model_list(self) -> _Plan:
        body = _encode({"data": self._models, "has_more": False,
                        "first_id": self._models[0]["id"] if self._models else None,
                        "last_id": self._models[-1]["id"] if self._models else None})
        return _Plan(200, self._headers(self._id("req_01")), (body,), (False,))

    def _model(self, model_id: str) -> _Plan:
        for m in self._models:
            if m["id"] == model_id:
                return _Plan(200, self._headers(self._id("req_01")), (_encode(m),), (False,))
        return self.error(404, f"model: {model_id}", "not_found_error")

    # -- messages --------------------------------------------------------------------------------------

    def _messages(self, body: bytes, mock_header: str | None, *, count_only: bool) -> _Plan:
        try:
            header = parse_directives(mock_header, require_prefix=False) if mock_header else MockDirectives()
        except MockDirectiveError as exc:
            return self.error(400, str(exc))
        try:
            req = _decode_request(body)
            _check(req, count_only)
        except msgspec.ValidationError as exc:
            return self.error(400, str(exc))
        except msgspec.DecodeError:
            return self.error(400, "There was an error parsing the body of your request as JSON.")
        except _Invalid as exc:
            return self.error(400, str(exc))
        try:
            own = parse_directives(_text_of(req.messages[-1].content))
        except MockDirectiveError as exc:
            return self.error(400, str(exc))
        d = header.merged(own)
        injected = self._injected(d)
        if injected is not None:
            return self.llm.timed(injected, d)
        prompt, cached, one_hour = _prompt_usage(req)
        if count_only:
            body = _encode({"input_tokens": prompt})
            return _Plan(200, self._headers(self._id("req_01")), (body,), (False,))
        last = _text_of(req.messages[-1].content) if req.messages[-1].role == "user" else ""
        read = _cue(last, "!cache") and "!cache read" in " ".join(last.split())
        cached = min(cached, prompt - 1) if cached else 0
        usage = _Usage(prompt - cached, 0 if read else cached, cached if read else 0, 0, one_hour)
        answer = _answer(req, self.llm.config.completion_words)
        message_id = self._id("msg_01")
        status = d.status or 200
        if not req.stream:
            if d.garbage:
                return self.llm.timed(_Plan(status, self._headers(self._id("req_01")), (_GARBAGE_BODY,),
                                            (False,)), d)
            message = {"id": message_id, "type": "message", "role": "assistant", "model": req.model,
                       "content": answer.blocks, "stop_reason": answer.stop_reason,
                       "stop_sequence": answer.stop_sequence, "usage": usage.wire(answer.output_tokens)}
            return self.llm.timed(_Plan(status, self._headers(self._id("req_01")), (_encode(message),),
                                        (False,)), d)
        events = self._events(req, answer, usage, message_id, d.chunks or self.llm.config.stream_chunks)
        if d.garbage:
            events.insert(1, _GARBAGE_EVENT)
        headers = [*self._headers(self._id("req_01"), _SSE), ("cache-control", "no-cache")]
        return self.llm.timed(_Plan(status, headers, tuple(events), (False,) * len(events), stream=True), d)

    def _events(
        self, req: _Request, answer: _Answer, usage: _Usage, message_id: str, chunks: int
    ) -> list[bytes]:
        start: dict[str, Any] = {
            "id": message_id, "type": "message", "role": "assistant", "model": req.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage.wire(1),
        }
        out = [_sse("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(answer.blocks):
            events = _block_events(index, block, chunks)
            if index == 0:  # Anthropic's ping comes right after the first block starts
                events.insert(1, _sse("ping", {"type": "ping"}))
            out += events
        final = usage.wire(answer.output_tokens)
        del final["cache_creation"], final["service_tier"]
        out.append(_sse("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence}, "usage": final}))
        out.append(_sse("message_stop", {"type": "message_stop"}))
        return out


def _block_events(index: int, block: dict[str, Any], chunks: int) -> list[bytes]:
    """content_block_start, the deltas, content_block_stop for one complete block."""
    kind = block["type"]
    deltas: list[dict[str, Any]]
    start: dict[str, Any]
    if kind == "text":
        start = {"type": "text", "text": ""}
        pieces = mock_content.json_fragments(block["text"], chunks) if block["text"].startswith(("{", "[")) \
            else split_words(block["text"].split(" "), chunks)
        deltas = [{"type": "text_delta", "text": p} for p in pieces if p]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p}
                  for p in split_words(block["thinking"].split(" "), chunks) if p]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        arguments = _encode(block["input"]).decode()
        deltas = [{"type": "input_json_delta", "partial_json": ""}]
        deltas += [{"type": "input_json_delta", "partial_json": p}
                   for p in mock_content.json_fragments(arguments, chunks)]
    out = [_sse("content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start})]
    out += [_sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas]
    out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


class AnthropicMockApp(MockApp):
    """``MockApp`` answering in Anthropic's wire format."""

    def __init__(self, config: Any = None, *, api_key: str | None = None) -> None:
        super().__init__(config)
        self.anthropic = AnthropicMock(self.llm, api_key)

    def _plan_for(self, request: Request) -> _Plan:
        return self.anthropic.plan(request)
