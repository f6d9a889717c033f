# cython: boundscheck=True, wraparound=True, cdivision=False
"""IR ⇄ Anthropic Messages API: request building, response and stream decoding, usage, errors, headers.

Pure functions and one sans-I/O state machine (``AnthropicStream``): bytes and IR values in, bytes and
IR values out; no sockets, no clock (callers pass the time), no engine. ``docs/translation.md`` has the
mapping tables in prose; the tables here are the source of truth.

Request rules (IR → Anthropic):

- System: the *leading* ``system``/``developer`` messages become the top-level ``system`` blocks. A
  system message after the conversation started is not hoisted (that would move an instruction to
  before the turns it follows): it becomes a text block ``<system>…</system>`` in a ``user`` turn at
  its place, merged with the user content around it.
- Roles: ``tool`` messages become ``tool_result`` blocks in a ``user`` turn; consecutive turns of the
  same role are merged into one (Anthropic wants all results of parallel calls in one user turn).
- Tool-call ids: Anthropic accepts ``^[a-zA-Z0-9_-]+$``. A valid id is sent as is; any other id (or
  one that starts with the escape prefix) is sent as ``gwx_`` + base64url(id) and ``restore_tool_id``
  maps it back, so ids from other providers survive a conversation that moves between them.
- ``tool_choice``: auto→auto, none→none (kept, not dropped), required→any, named→tool;
  ``parallel_tool_calls: false`` → ``disable_parallel_tool_use: true``.
- Thinking: thinking parts with a signature (signature-only ones too) and redacted thinking go back
  byte for byte, first in the assistant turn; thinking text without a signature cannot be verified by
  Anthropic and is dropped. ``reasoning.budget_tokens`` or an effort word (``REASONING_BUDGETS``)
  turns thinking on; then temperature and top_k are not sent (Anthropic refuses them with thinking).
  Anthropic refuses thinking with a forced tool (``tool_choice`` any/tool): the client's tool choice
  wins and thinking stays off for that request.
- Structured output: ``json_schema`` → ``output_config.format`` (Anthropic's native structured
  outputs, constrained decoding; not a forced tool, so tools and tool_choice stay the client's), the
  schema fitted to the subset Anthropic enforces (``fit_schema``; so are ``strict`` tools' schemas).
  ``json_object`` has no native form: a system instruction asks for one JSON object.
- ``max_tokens`` is required by Anthropic: the client's (OpenAI ``max_completion_tokens`` or
  ``max_tokens``), else ``default_max_tokens`` (4096) plus the thinking budget when thinking is on.
- Sampling: ``temperature`` is clamped to Anthropic's range [0, 1]; ``top_p`` and ``top_k`` pass
  (``sampling="all"``). Some models refuse ``temperature`` and ``top_p`` together: ``sampling="single"``
  sends ``temperature`` alone when the client gave both. Some refuse any non-default sampling parameter
  (and API versions after ``2023-06-01`` drop the fields; the SDK's current request types no longer
  list them): ``sampling="none"`` leaves all three out. The ``sampling`` key of the provider or the
  model decides (``True``/``False`` stand for ``"all"``/``"none"``).
  ``seed`` and the penalties have no Anthropic form and are not sent; ``n > 1`` is refused (400).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from gateway import ir
from gateway._core.sse import event_data
from gateway.errors import BadRequest
from gateway.providers.schemas import anthropic as wire
from gateway.providers.sse_machine import DONE, FAILED, IDLE, MESSAGE, SSEMachine

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ERROR_TYPES",
    "REASONING_BUDGETS",
    "STOP_REASONS",
    "AnthropicStream",
    "Sampling",
    "build_request",
    "cumulative_usage",
    "encode_request",
    "error_from_response",
    "fit_schema",
    "provider_error",
    "ratelimit_headers",
    "response_from_body",
    "restore_tool_id",
    "sanitize_tool_id",
    "stop_reason",
    "usage_from_wire",
]

DEFAULT_MAX_TOKENS: Final = 4096
#: which sampling parameters a model takes (the ``sampling`` config key): all three, temperature or top_p
#: but not both, or none
Sampling = Literal["all", "single", "none"]

#: OpenAI ``reasoning_effort`` → Anthropic thinking budget (tokens); ``none`` turns thinking off
REASONING_BUDGETS: Final[dict[str, int]] = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32768,
}
_MIN_BUDGET: Final = 1024

#: Anthropic ``stop_reason`` → IR
STOP_REASONS: Final[dict[str, ir.StopReason]] = {
    "end_turn": ir.StopReason.END_TURN,
    "max_tokens": ir.StopReason.MAX_TOKENS,
    "stop_sequence": ir.StopReason.STOP_SEQUENCE,
    "tool_use": ir.StopReason.TOOL_USE,
    "pause_turn": ir.StopReason.PAUSE_TURN,
    "refusal": ir.StopReason.REFUSAL,
    "model_context_window_exceeded": ir.StopReason.CONTEXT_WINDOW,
}

#: Anthropic error ``type`` → (status for the client, OpenAI error type, code, retryable). Errors
#: about the gateway's own upstream credentials or setup (401/402/403/404 upstream) are the
#: operator's, not the client's: they surface as 502.
ERROR_TYPES: Final[dict[str, tuple[int, str, str, bool]]] = {
    "invalid_request_error": (400, "invalid_request_error", "invalid_request", False),
    "authentication_error": (502, "upstream_error", "upstream_authentication", False),
    "billing_error": (502, "upstream_error", "upstream_billing", False),
    "permission_error": (502, "upstream_error", "upstream_permission", False),
    "not_found_error": (502, "upstream_error", "upstream_not_found", False),
    "request_too_large": (413, "invalid_request_error", "payload_too_large", False),
    "rate_limit_error": (429, "rate_limit_error", "rate_limit_exceeded", True),
    "api_error": (502, "upstream_error", "upstream_error", True),
    "timeout_error": (504, "upstream_error", "upstream_timeout", True),
    "overloaded_error": (503, "server_error", "upstream_overloaded", True),
}


# ---- tool-call ids -------------------------------------------------------------------------------

_VALID_ID: Final = re.compile(r"[a-zA-Z0-9_-]+")
_ID_PREFIX: Final = "gwx_"


def sanitize_tool_id(tool_id: str) -> str:
    """A tool-call id Anthropic accepts; ``restore_tool_id`` gives the original back."""
    if _VALID_ID.fullmatch(tool_id) and not tool_id.startswith(_ID_PREFIX):
        return tool_id
    return _ID_PREFIX + base64.urlsafe_b64encode(tool_id.encode()).decode().rstrip("=")


def restore_tool_id(tool_id: str) -> str:
    """The original of an id made by ``sanitize_tool_id`` (any other id unchanged)."""
    if not tool_id.startswith(_ID_PREFIX):
        return tool_id
    enc = tool_id[len(_ID_PREFIX):]
    try:
        return base64.urlsafe_b64decode(enc + "=" * (-len(enc) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return tool_id


# ---- structured-output schemas --------------------------------------------------------------------
#
# Anthropic's constrained decoding (``output_config.format`` and ``strict`` tools) takes a subset of JSON
# Schema: every object closed (``additionalProperties: false``), ``anyOf``/``allOf`` but not ``oneOf``,
# a fixed set of string formats, ``minItems`` of 0 or 1 only, no numeric or length bounds. OpenAI
# accepts more (and non-strict schemas need not close their objects), so a client's schema is fitted:
# objects are closed, ``oneOf`` becomes ``anyOf``, and each keyword Anthropic cannot enforce moves
# into the node's description, where the model can still read it. ``$defs`` and ``$ref`` are kept.

_STRING_FORMATS: Final = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)
#: keywords kept as they are on every node
_KEPT: Final = ("$ref", "enum", "const", "description", "title")


def _fit_node(node: dict[str, Any]) -> dict[str, Any]:
    rest = dict(node)
    out: dict[str, Any] = {k: rest.pop(k) for k in _KEPT if k in rest}
    if "$defs" in rest:
        out["$defs"] = {name: fit_schema(d) for name, d in rest.pop("$defs").items()}
    for union in ("anyOf", "oneOf", "allOf"):
        if isinstance(rest.get(union), list):
            out["allOf" if union == "allOf" else "anyOf"] = [fit_schema(v) for v in rest.pop(union)]
    kind = rest.pop("type", None)
    if kind is not None:
        out["type"] = kind
    if kind == "object" or (isinstance(kind, list) and "object" in kind):
        out["properties"] = {k: fit_schema(v) for k, v in rest.pop("properties", {}).items()}
        if "required" in rest:
            out["required"] = rest.pop("required")
        rest.pop("additionalProperties", None)
        out["additionalProperties"] = False
    if "items" in rest:
        out["items"] = fit_schema(rest.pop("items"))
    if rest.get("minItems") in (0, 1):
        out["minItems"] = rest.pop("minItems")
    if rest.get("format") in _STRING_FORMATS:
        out["format"] = rest.pop("format")
    if rest:
        note = "{" + ", ".join(f"{k}: {v}" for k, v in rest.items()) + "}"
        out["description"] = f"{out['description']}\n\n{note}" if "description" in out else note
    return out


def fit_schema(schema: Any) -> Any:
    """A JSON schema fitted to what Anthropic's structured outputs accept (see above)."""
    return _fit_node(schema) if isinstance(schema, dict) else schema


# ---- request -------------------------------------------------------------------------------------

_EMPTY_SCHEMA: Final[dict[str, Any]] = {"type": "object", "properties": {}}
_JSON_OBJECT_INSTRUCTION: Final = "Respond with a single JSON object and nothing else."
_decode_args: Final = msgspec.json.Decoder(dict[str, Any])


def _cache(part: Any) -> dict[str, Any] | None:
    cc: dict[str, Any] | None = part.cache_control
    return cc


def _image_block(part: ir.ImagePart) -> wire.ImageBlock:
    if part.data is not None:
        if not part.media_type:
            raise BadRequest("a base64 image needs its media type", param="messages")
        return wire.ImageBlock(wire.Base64Source(part.media_type, part.data), _cache(part))
    if part.url is None:
        raise BadRequest("an image needs a url or base64 data", param="messages")
    return wire.ImageBlock(wire.URLSource(part.url), _cache(part))


def _document_block(part: ir.DocumentPart) -> wire.DocumentBlock:
    source: wire.Base64Source | wire.URLSource | wire.PlainTextSource | wire.FileSource
    if part.file_id is not None:
        source = wire.FileSource(part.file_id)
    elif part.text is not None:
        source = wire.PlainTextSource(part.text)
    elif part.data is not None:
        source = wire.Base64Source(part.media_type or "application/pdf", part.data)
    elif part.url is not None:
        source = wire.URLSource(part.url)
    else:
        raise BadRequest("a document needs a url, data, text or file id", param="messages")
    return wire.DocumentBlock(source, title=part.title or part.filename, cache_control=_cache(part))


def _tool_use_block(part: ir.ToolCallPart) -> wire.ToolUseBlock:
    try:
        args = _decode_args.decode(part.arguments) if part.arguments.strip() else {}
    except msgspec.MsgspecError:
        raise BadRequest(
            f"the arguments of tool call {part.id!r} are not a JSON object", param="messages"
        ) from None
    return wire.ToolUseBlock(sanitize_tool_id(part.id), part.name, args)


def _result_block(part: ir.ToolResultPart) -> wire.ToolResultBlock:
    content: list[wire.TextBlock | wire.ImageBlock | wire.DocumentBlock] = []
    for p in part.content:
        if isinstance(p, ir.TextPart):
            if p.text:
                content.append(wire.TextBlock(p.text, cache_control=p.cache_control))
        elif isinstance(p, ir.ImagePart):
            content.append(_image_block(p))
        else:
            content.append(_document_block(p))
    tool_use_id = sanitize_tool_id(part.tool_call_id)
    return wire.ToolResultBlock(tool_use_id, content, part.is_error, part.cache_control)


def _block(part: ir.Part) -> wire.ContentBlock | dict[str, Any] | None:
    """One IR part as an Anthropic block (None: nothing to send)."""
    if isinstance(part, ir.TextPart):
        if not part.text:
            return None  # Anthropic refuses empty text blocks
        return wire.TextBlock(part.text, part.citations, part.cache_control)
    if isinstance(part, ir.ImagePart):
        return _image_block(part)
    if isinstance(part, ir.DocumentPart):
        return _document_block(part)
    if isinstance(part, ir.ToolCallPart):
        return _tool_use_block(part)
    if isinstance(part, ir.ToolResultPart):
        return _result_block(part)
    if isinstance(part, ir.ThinkingPart):
        if part.signature is None:
            return None  # unsigned reasoning (another provider's) cannot be verified by Anthropic
        return wire.ThinkingBlock(part.text, part.signature)
    if isinstance(part, ir.RedactedThinkingPart):
        return wire.RedactedThinkingBlock(part.data)
    return part.raw if part.provider == "anthropic" else None


_THINKING_TYPES: Final = (ir.ThinkingPart, ir.RedactedThinkingPart)


def _turn_blocks(msg: ir.Message) -> tuple[str, list[wire.ContentBlock | dict[str, Any]]]:
    """(Anthropic role, blocks) of one non-leading IR message."""
    if msg.role in ("system", "developer"):
        text = "\n".join(p.text for p in msg.content if isinstance(p, ir.TextPart))
        return "user", [wire.TextBlock(f"<system>\n{text}\n</system>")]
    role = "assistant" if msg.role == "assistant" else "user"
    parts = msg.content
    if len(parts) == 1 and type(parts[0]) is ir.TextPart:
        # PERF: the common turn, one text part (nothing to reorder): its block without the walk below
        only = parts[0]
        return role, [wire.TextBlock(only.text, only.citations, only.cache_control)] if only.text else []
    return role, _blocks(role, parts)


def _blocks(role: str, parts: list[ir.Part]) -> list[wire.ContentBlock | dict[str, Any]]:
    """The blocks of a turn's parts, of any shape (the general path of ``_turn_blocks``)."""
    if role == "assistant":
        # thinking must open the assistant turn, in its original order
        parts = [p for p in parts if isinstance(p, _THINKING_TYPES)] + [
            p for p in parts if not isinstance(p, _THINKING_TYPES)
        ]
    return [b for b in map(_block, parts) if b is not None]


def _messages(messages: list[ir.Message]) -> tuple[list[wire.TextBlock], list[wire.MessageParam]]:
    system: list[wire.TextBlock] = []
    i = 0
    while i < len(messages) and messages[i].role in ("system", "developer"):
        for p in messages[i].content:
            if isinstance(p, ir.TextPart) and p.text:
                system.append(wire.TextBlock(p.text, cache_control=p.cache_control))
        i += 1
    turns: list[wire.MessageParam] = []
    for msg in messages[i:]:
        role, blocks = _turn_blocks(msg)
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)
        else:
            turns.append(wire.MessageParam(role, blocks))  # type: ignore[arg-type]
    return system, turns


def _tool_choice(req: ir.Request) -> wire.ToolChoice | None:
    if not req.tools:
        return None
    disable = True if req.parallel_tool_calls is False else None
    tc = req.tool_choice
    if tc is None:
        return wire.ToolChoice("auto", disable_parallel_tool_use=disable) if disable else None
    if tc.mode == "none":
        return wire.ToolChoice("none")
    if tc.mode == "required":
        return wire.ToolChoice("any", disable_parallel_tool_use=disable)
    if tc.mode == "named":
        return wire.ToolChoice("tool", tc.name, disable)
    return wire.ToolChoice("auto", disable_parallel_tool_use=disable)


def _thinking_budget(req: ir.Request) -> int | None:
    r = req.reasoning
    if r is None:
        return None
    if r.budget_tokens is not None:
        return r.budget_tokens
    if r.effort is None or r.effort == "none":
        return None
    budget = REASONING_BUDGETS.get(r.effort)
    if budget is None:
        raise BadRequest(f"unknown reasoning_effort {r.effort!r}", param="reasoning_effort")
    return budget


def _max_tokens_and_budget(req: ir.Request, default_max_tokens: int) -> tuple[int, int | None]:
    budget = _thinking_budget(req)
    if req.max_tokens is None:
        return default_max_tokens + (budget or 0), budget
    if budget is not None and budget >= req.max_tokens:
        # the client's max_tokens counts reasoning too (OpenAI's rule): share it, or think not at all
        budget = req.max_tokens // 2 if req.max_tokens // 2 >= _MIN_BUDGET else None
    return req.max_tokens, budget


def build_request(
    req: ir.Request, model: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS,
    sampling: Sampling | bool = "all",
) -> wire.Request:
    """The Anthropic request for ``req``, sent to upstream model id ``model``. Raises BadRequest.

    ``sampling``: "all" (or True) sends the client's temperature/top_p/top_k; "single": temperature
    alone when the client gave both it and top_p (the model refuses the pair); "none" (or False): the
    model refuses all three, none is sent.
    """
    mode = ("all" if sampling else "none") if isinstance(sampling, bool) else sampling
    if req.n is not None and req.n > 1:
        raise BadRequest("this model answers one choice at a time (n must be 1)", param="n")
    system, turns = _messages(req.messages)
    fmt = req.response_format
    output_config = None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.schema is None:
            raise BadRequest("response_format json_schema needs a schema", param="response_format")
        output_config = wire.OutputConfig(format=wire.JSONOutputFormat(fit_schema(fmt.schema)))
    elif fmt is not None and fmt.type == "json_object":
        system.append(wire.TextBlock(_JSON_OBJECT_INSTRUCTION))
    max_tokens, budget = _max_tokens_and_budget(req, default_max_tokens)
    if req.tools and req.tool_choice is not None and req.tool_choice.mode in ("required", "named"):
        budget = None  # Anthropic forces a tool only without thinking; the client's choice wins
    thinking = wire.ThinkingConfig("enabled", budget) if budget is not None else None
    temperature = None if req.temperature is None else min(max(req.temperature, 0.0), 1.0)
    top_p, top_k = req.top_p, req.top_k
    if mode == "none":
        temperature = top_p = top_k = None
    elif mode == "single" and temperature is not None and not thinking:
        top_p = None  # the model takes one of the two: the client's temperature wins
    tools = [
        wire.ToolParam(
            t.name,
            (fit_schema(t.parameters) if t.strict else t.parameters) or _EMPTY_SCHEMA,
            t.description,
            t.strict,
            t.cache_control,
        )
        for t in req.tools
    ]
    return wire.Request(
        model=model,
        messages=turns,
        max_tokens=max_tokens,
        system=system or None,
        stop_sequences=req.stop or None,
        temperature=None if thinking else temperature,
        top_p=top_p,
        top_k=None if thinking else top_k,
        metadata=wire.Metadata(req.user) if req.user else None,
        tools=tools or None,
        tool_choice=_tool_choice(req),
        thinking=thinking,
        output_config=output_config,
        stream=True if req.stream else None,
    )


def encode_request(
    req: ir.Request, model: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS,
    sampling: Sampling | bool = "all",
) -> bytes:
    """``build_request`` as the JSON body."""
    return wire.encode(build_request(req, model, default_max_tokens=default_max_tokens, sampling=sampling))


# ---- response ------------------------------------------------------------------------------------

_encode_json: Final = msgspec.json.Encoder().encode


def usage_from_wire(u: wire.Usage | wire.MessageDeltaUsage) -> ir.Usage:
    """Anthropic usage → IR: ``input_tokens`` already excludes cache reads and writes."""
    details = u.output_tokens_details
    return ir.Usage(
        input_tokens=u.input_tokens or 0,
        output_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read_input_tokens or 0,
        cache_write_tokens=u.cache_creation_input_tokens or 0,
        reasoning_tokens=details.thinking_tokens if details is not None else 0,
    )


def _part(block: wire.ContentBlock | dict[str, Any]) -> ir.Part | None:
    if type(block) is wire.TextBlock:  # PERF: the common block, one type check
        return ir.TextPart(block.text, block.citations)
    if isinstance(block, wire.ToolUseBlock):
        return ir.ToolCallPart(restore_tool_id(block.id), block.name, _encode_json(block.input).decode())
    if isinstance(block, wire.ThinkingBlock):
        return ir.ThinkingPart(block.thinking, block.signature)
    if isinstance(block, wire.RedactedThinkingBlock):
        return ir.RedactedThinkingPart(block.data)
    if isinstance(block, dict):
        return ir.OpaquePart("anthropic", block)
    return None  # input-only block types never appear in an answer


def stop_reason(value: str | None) -> ir.StopReason | None:
    """Anthropic stop reason → IR (an unknown one reads as the end of the turn)."""
    if value is None:
        return None
    return STOP_REASONS.get(value, ir.StopReason.END_TURN)


def response_from_body(body: bytes) -> ir.Response:
    """A non-streamed Anthropic answer → IR. Raises msgspec.DecodeError/ValidationError."""
    msg = wire.decode_message(body)
    parts = [p for p in (_part(wire.decode_block(raw)) for raw in msg.content) if p is not None]
    return ir.Response(
        id=msg.id,
        model=msg.model,
        content=parts,
        stop_reason=stop_reason(msg.stop_reason),
        stop_sequence=msg.stop_sequence,
        usage=usage_from_wire(msg.usage),
        stop_details=msg.stop_details,
    )


# ---- errors and headers --------------------------------------------------------------------------


def _fallback_error(status: int) -> tuple[int, str, str, bool]:
    if status == 429:
        return ERROR_TYPES["rate_limit_error"]
    if status == 529:
        return ERROR_TYPES["overloaded_error"]
    if status == 413:
        return ERROR_TYPES["request_too_large"]
    if status in (400, 422):
        return ERROR_TYPES["invalid_request_error"]
    return (502, "upstream_error", "upstream_error", status >= 500 or status == 408)


def provider_error(error_type: str | None, message: str, http_status: int) -> ir.ProviderError:
    """An Anthropic error (by its ``type``, else by the upstream HTTP status) as the client should see it."""
    status, type_, code, retryable = ERROR_TYPES.get(error_type or "", None) or _fallback_error(http_status)
    if code == "invalid_request" and "prompt is too long" in message:
        code = "context_length_exceeded"
    return ir.ProviderError(status, type_, code, message, retryable, error_type)


def error_from_response(status: int, body: bytes) -> ir.ProviderError:
    """A non-2xx Anthropic answer → IR error (529 ``overloaded_error`` is retryable)."""
    err = wire.decode_error(body)
    if err is None:
        text = body[:200].decode("utf-8", "replace")
        return provider_error(None, f"upstream answered {status}: {text}", status)
    return provider_error(err.error.type, err.error.message, status)


_RATELIMIT_NAMES: Final = {
    "requests-limit": "x-ratelimit-limit-requests",
    "requests-remaining": "x-ratelimit-remaining-requests",
    "requests-reset": "x-ratelimit-reset-requests",
    "tokens-limit": "x-ratelimit-limit-tokens",
    "tokens-remaining": "x-ratelimit-remaining-tokens",
    "tokens-reset": "x-ratelimit-reset-tokens",
}
_RATELIMIT_PREFIX: Final = "anthropic-ratelimit-"


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``250ms``, ``12s``, ``1m30s``, ``2h0m5s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def _reset(value: str, now: float) -> str | None:
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return _duration(max(0.0, at.timestamp() - now))


def ratelimit_headers(headers: Iterable[tuple[str, str]], now: float) -> list[tuple[str, str]]:
    """``anthropic-ratelimit-*`` → OpenAI's ``x-ratelimit-*`` (resets as durations from ``now``).

    Anthropic reports ``tokens-*`` (the most restrictive limit) and, per direction, ``input-tokens-*``
    and ``output-tokens-*``; the OpenAI names carry ``tokens-*``, or ``input-tokens-*`` when only those
    are present. Names are matched case-insensitively.
    """
    found: dict[str, str] = {}
    for name, raw in headers:
        low = name.lower()
        if low.startswith(_RATELIMIT_PREFIX):
            found[low[len(_RATELIMIT_PREFIX):]] = raw.strip()
    out: list[tuple[str, str]] = []
    for suffix, target in _RATELIMIT_NAMES.items():
        value: str | None = found.get(suffix)
        if value is None and suffix.startswith("tokens-"):
            value = found.get("input-" + suffix)
        if value is not None and suffix.endswith("-reset"):
            value = _reset(value, now)
        if value is not None:
            out.append((target, value))
    return out


# ---- the stream state machine --------------------------------------------------------------------
#
# Theory of operation. Anthropic streams one message as SSE events (the ``event:`` name repeats the
# JSON ``type``, which is all we read):
#
#   message_start  (the message shell: id, model, usage with the INPUT and cache tokens)
#   { content_block_start(index) content_block_delta(index)* content_block_stop(index) }*
#   message_delta+ (stop_reason; usage CUMULATIVE so far: output_tokens, sometimes input/cache too)
#   message_stop
#
# with ``ping`` anywhere and ``error`` (e.g. ``overloaded_error``) ending the stream at any point. The
# machine has four states; each (state, event) pair in TRANSITIONS names a handler and the next state.
# A pair not in the table is a protocol violation: the stream fails with a 502-typed StreamError and
# every later event is ignored. Blocks are tracked by their index (a dict of open blocks), so
# interleaved blocks are accepted. Unknown event types and unknown block types (server tools,
# future additions) are skipped, not failed: forward compatibility beats strictness here.
#
#   state      event                 → handler            next
#   IDLE       message_start           _on_message_start    MESSAGE
#   IDLE       ping                    -                    IDLE
#   MESSAGE    content_block_start     _on_block_start      MESSAGE
#   MESSAGE    content_block_delta     _on_block_delta      MESSAGE
#   MESSAGE    content_block_stop      _on_block_stop       MESSAGE
#   MESSAGE    message_delta           _on_message_delta    MESSAGE
#   MESSAGE    message_stop            _on_message_stop     DONE
#   MESSAGE    ping                    -                    MESSAGE
#   DONE       ping                    -                    DONE
#   IDLE, MESSAGE  error               _on_error            FAILED
#
# Usage: ``message_start`` carries input_tokens, cache reads and writes; each ``message_delta`` carries
# the cumulative output_tokens (and any other field that changed). The machine keeps the running
# absolute figures and emits them as ``UsageUpdate`` (latest wins), so nothing is ever summed twice.


TRANSITIONS: Final[dict[tuple[str, type], tuple[str | None, str]]] = {
    (IDLE, wire.MessageStart): ("_on_message_start", MESSAGE),
    (IDLE, wire.Ping): (None, IDLE),
    (IDLE, wire.ErrorEvent): ("_on_error", FAILED),
    (MESSAGE, wire.ContentBlockStart): ("_on_block_start", MESSAGE),
    (MESSAGE, wire.ContentBlockDelta): ("_on_block_delta", MESSAGE),
    (MESSAGE, wire.ContentBlockStop): ("_on_block_stop", MESSAGE),
    (MESSAGE, wire.MessageDelta): ("_on_message_delta", MESSAGE),
    (MESSAGE, wire.MessageStop): ("_on_message_stop", DONE),
    (MESSAGE, wire.Ping): (None, MESSAGE),
    (MESSAGE, wire.ErrorEvent): ("_on_error", FAILED),
    (DONE, wire.Ping): (None, DONE),
}

#: which delta type each open block accepts (``opaque``: unknown block, its deltas are skipped)
_DELTA_KIND: Final[dict[tuple[str, type], str | None]] = {
    ("text", wire.TextDelta): "text",
    ("text", wire.CitationsDelta): None,
    ("tool_call", wire.InputJSONDelta): "arguments",
    ("thinking", wire.ThinkingDelta): "thinking",
    ("thinking", wire.SignatureDelta): "signature",
}

_KNOWN_EVENTS: Final = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    }
)


class _Head(msgspec.Struct):
    type: str = ""
    index: int | None = None


_head_decoder: Final = msgspec.json.Decoder(_Head)


class ProtocolViolation(Exception):
    """The upstream stream broke Anthropic's event grammar."""


class AnthropicStream(SSEMachine):
    """Anthropic SSE bytes in, IR stream events out: ``feed(chunk)`` per body chunk, then ``close()``."""

    __slots__ = ("_blocks", "_stop", "_stop_sequence")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        super().__init__(max_event_bytes)
        #: open blocks: index → kind (text, tool_call, thinking, redacted_thinking, opaque)
        self._blocks: dict[int, str] = {}
        self._stop: str | None = None
        self._stop_sequence: str | None = None

    def _event(self, event: bytes, out: list[ir.StreamEvent]) -> None:
        if self.state == FAILED:
            return
        data = event_data(event)
        if not data or (data[0] != 123 and not data.strip()):  # PERF: data is usually a JSON object
            return
        try:
            ev = wire.decode_event(data)
        except msgspec.ValidationError:
            if self._skippable(data):
                return
            self._fail(out, "the upstream sent a malformed stream event")
            return
        except msgspec.DecodeError:
            self._fail(out, "the upstream sent a stream event that is not JSON")
            return
        if type(ev) is wire.ContentBlockDelta and self.state == MESSAGE:
            # PERF: the most common event, a text delta on an open text block, without the table's
            # lookups (the same outcome as _on_block_delta's)
            delta = ev.delta
            if type(delta) is wire.TextDelta and self._blocks.get(ev.index) == "text":
                if delta.text:
                    out.append(ir.BlockDelta(ev.index, "text", delta.text))
                return
        step = TRANSITIONS.get((self.state, type(ev)))
        if step is None:
            if self.state != DONE:
                self._fail(out, f"unexpected {type(ev).__name__} event in state {self.state}")
            return
        handler, next_state = step
        if handler is not None:
            try:
                getattr(self, handler)(ev, out)
            except ProtocolViolation as e:
                self._fail(out, str(e))
                return
        self.state = next_state

    def _skippable(self, data: bytes) -> bool:
        """An unknown event type, or a delta of a type we do not know on any block: skip it."""
        try:
            head = _head_decoder.decode(data)
        except msgspec.MsgspecError:
            return False
        if head.type not in _KNOWN_EVENTS:
            return True
        # a delta type we do not know yet, on an open block
        return head.type == "content_block_delta" and head.index in self._blocks

    def _on_message_start(self, ev: wire.MessageStart, out: list[ir.StreamEvent]) -> None:
        self._usage = usage_from_wire(ev.message.usage)
        out.append(ir.MessageStart(ev.message.id, ev.message.model, self._usage))

    def _on_block_start(self, ev: wire.ContentBlockStart, out: list[ir.StreamEvent]) -> None:
        if ev.index in self._blocks:
            raise ProtocolViolation(f"content block {ev.index} started twice")
        try:
            block = wire.decode_block(ev.content_block)
        except msgspec.MsgspecError:
            raise ProtocolViolation("the upstream sent a malformed content block") from None
        i = ev.index
        if isinstance(block, wire.TextBlock):
            self._open(i, "text", ir.BlockStart(i, "text"), out)
            if block.text:
                out.append(ir.BlockDelta(i, "text", block.text))
        elif isinstance(block, wire.ToolUseBlock):
            start = ir.BlockStart(i, "tool_call", restore_tool_id(block.id), block.name)
            self._open(i, "tool_call", start, out)
            if block.input:
                out.append(ir.BlockDelta(i, "arguments", _encode_json(block.input).decode()))
        elif isinstance(block, wire.ThinkingBlock):
            self._open(i, "thinking", ir.BlockStart(i, "thinking"), out)
            if block.thinking:
                out.append(ir.BlockDelta(i, "thinking", block.thinking))
            if block.signature:
                out.append(ir.BlockDelta(i, "signature", block.signature))
        elif isinstance(block, wire.RedactedThinkingBlock):
            self._open(i, "redacted_thinking", ir.BlockStart(i, "redacted_thinking", data=block.data), out)
        else:
            self._blocks[i] = "opaque"

    def _open(self, index: int, kind: str, start: ir.BlockStart, out: list[ir.StreamEvent]) -> None:
        self._blocks[index] = kind
        out.append(start)

    def _on_block_delta(self, ev: wire.ContentBlockDelta, out: list[ir.StreamEvent]) -> None:
        kind = self._blocks.get(ev.index)
        if kind is None:
            raise ProtocolViolation(f"delta for content block {ev.index}, which is not open")
        if kind == "opaque":
            return
        key = (kind, type(ev.delta))
        if key not in _DELTA_KIND:
            raise ProtocolViolation(f"{type(ev.delta).__name__} on a {kind} block")
        ir_kind = _DELTA_KIND[key]
        value = _delta_value(ev.delta)
        if ir_kind is not None and value:
            out.append(ir.BlockDelta(ev.index, ir_kind, value))  # type: ignore[arg-type]

    def _on_block_stop(self, ev: wire.ContentBlockStop, out: list[ir.StreamEvent]) -> None:
        kind = self._blocks.pop(ev.index, None)
        if kind is None:
            raise ProtocolViolation(f"stop for content block {ev.index}, which is not open")
        if kind != "opaque":
            out.append(ir.BlockStop(ev.index))

    def _on_message_delta(self, ev: wire.MessageDelta, out: list[ir.StreamEvent]) -> None:
        if ev.delta.stop_reason is not None:
            self._stop = ev.delta.stop_reason
            self._stop_sequence = ev.delta.stop_sequence
        u = ev.usage
        if u is None:
            return
        self._usage = cumulative_usage(self._usage, u)
        out.append(ir.UsageUpdate(self._usage))

    def _on_message_stop(self, ev: wire.MessageStop, out: list[ir.StreamEvent]) -> None:
        for index in sorted(self._blocks):
            if self._blocks[index] != "opaque":
                out.append(ir.BlockStop(index))
        self._blocks.clear()
        reason = stop_reason(self._stop) or ir.StopReason.END_TURN
        out.append(ir.MessageStop(reason, self._stop_sequence))

    def _on_error(self, ev: wire.ErrorEvent, out: list[ir.StreamEvent]) -> None:
        out.append(ir.StreamError(provider_error(ev.error.type, ev.error.message, 200)))


def cumulative_usage(cur: ir.Usage, u: wire.MessageDeltaUsage) -> ir.Usage:
    """A ``message_delta``'s figures over the running ones (each is cumulative; an absent one: unchanged)."""
    return ir.Usage(
        input_tokens=cur.input_tokens if u.input_tokens is None else u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=cur.cache_read_tokens
        if u.cache_read_input_tokens is None
        else u.cache_read_input_tokens,
        cache_write_tokens=cur.cache_write_tokens
        if u.cache_creation_input_tokens is None
        else u.cache_creation_input_tokens,
        reasoning_tokens=cur.reasoning_tokens
        if u.output_tokens_details is None
        else u.output_tokens_details.thinking_tokens,
    )


def _delta_value(delta: Any) -> str:
    if isinstance(delta, wire.TextDelta):
        return delta.text
    if isinstance(delta, wire.InputJSONDelta):
        return delta.partial_json
    if isinstance(delta, wire.ThinkingDelta):
        return delta.thinking
    if isinstance(delta, wire.SignatureDelta):
        return delta.signature
    return ""
