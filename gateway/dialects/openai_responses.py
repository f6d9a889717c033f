"""The OpenAI Responses dialect (``/v1/responses``): request JSON → IR, IR → ``response`` and its SSE events.

Pure: no I/O, no clock (``created_at`` is passed in), no ids drawn here except through ``new_id``
(callers may pass their own). The conversation store and the engine front live in ``gateway.responses``.

Request → IR
------------
``input`` is a string (one user message) or a list of items:

    item                              IR
    --------------------------------  --------------------------------------------------------------
    message (user/system/developer)   Message(role, parts): input_text, input_image, input_file
    message (assistant)               Message("assistant"): output_text / refusal parts as text
    function_call                     a ToolCallPart on an assistant message (consecutive calls and
                                      the text before them share one assistant turn)
    function_call_output              Message("tool", [ToolResultPart(call_id, output)])
    reasoning                         a ThinkingPart (``content`` text, ``encrypted_content`` as the
                                      signature) or, for ``encrypted_content`` "redacted:<data>", a
                                      RedactedThinkingPart, on the assistant turn it precedes
    item_reference, anything else     400 (the gateway keeps no items but whole responses)

``instructions`` becomes a leading system message (never carried over by ``previous_response_id``,
as OpenAI documents). ``tools`` of type ``function`` become IR tools; a built-in tool (``web_search``,
``file_search``, ``computer_use_preview``, ``code_interpreter``, ``image_generation``, ``mcp``, ...) is
something the gateway cannot run: a 400 ``unsupported_tool``, never a silent drop. ``text.format``
``json_schema`` / ``json_object`` is the IR response format; ``reasoning.effort`` the IR reasoning;
``max_output_tokens`` the IR ``max_tokens``.

IR → response
-------------
An answer's parts become output items in order: consecutive text parts one ``message`` item with
``output_text`` parts, each tool call a ``function_call`` item (``call_id`` is the tool call's id),
thinking a ``reasoning`` item (its signature in ``encrypted_content``, so a client that sends the item
back gets it to the provider unchanged). The stop reason gives the status: ``completed``, or
``incomplete`` with ``incomplete_details.reason`` ``max_output_tokens`` (length, a paused turn, the
context window) or ``content_filter`` (a refusal). Usage: ``input_tokens`` counts every prompt token
(cached included, as OpenAI does), ``cached_tokens`` the cache reads.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from gateway import errors, ir
from gateway.dialects.base import ClientDialect
from gateway.dialects.ids import random_hex

__all__ = [
    "BUILTIN_TOOLS",
    "OPENAI_RESPONSES",
    "Decoded",
    "EventEncoder",
    "OpenAIResponses",
    "ResponseObject",
    "decode_request",
    "encode_error_event",
    "input_items_of",
    "new_id",
    "output_items",
    "response_object",
    "usage_of",
]

#: tool types the Responses API runs on OpenAI's side; the gateway cannot, so it refuses them (400)
BUILTIN_TOOLS: Final = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "computer",
        "computer_use",
        "computer_use_preview",
        "code_interpreter",
        "image_generation",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "custom",
        "tool_search",
    }
)

_REDACTED: Final = "redacted:"




def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``resp_``, ``msg_``, ``fc_``, ``rs_`` + 48 hex digits (192 random bits)."""
    return f"{prefix}_{random_hex(24)}"


# ---- request wire types --------------------------------------------------------------------------


class _FunctionChoice(msgspec.Struct, frozen=True):
    type: str
    name: str | None = None


class _Format(msgspec.Struct, frozen=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class _Text(msgspec.Struct, frozen=True):
    format: _Format | None = None
    verbosity: str | None = None


class _Reasoning(msgspec.Struct, frozen=True):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class _Request(msgspec.Struct, frozen=True):
    model: str
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | _FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: _Text | None = None
    reasoning: _Reasoning | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    stream: bool | None = None
    user: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    truncation: str | None = None
    background: bool | None = None
    conversation: Any = None


class Decoded(msgspec.Struct, frozen=True):
    """A Responses request: its parameters, the IR of its own input, and its input items as stored."""

    params: _Request
    #: the system message of ``instructions`` (never carried to the next turn), or None
    instructions: ir.Message | None
    #: this request's input as IR messages (without instructions or a previous conversation)
    messages: list[ir.Message]
    #: this request's input items, each with an id (``GET /v1/responses/{id}/input_items``)
    items: list[dict[str, Any]]

    @property
    def store(self) -> bool:
        return self.params.store is not False

    @property
    def stream(self) -> bool:
        return bool(self.params.stream)

    def ir_request(self, previous: list[ir.Message]) -> ir.Request:
        """The IR request: instructions, the previous conversation, this input."""
        p = self.params
        messages = ([self.instructions] if self.instructions is not None else []) + previous + self.messages
        return ir.Request(
            model=p.model,
            messages=messages,
            stream=bool(p.stream),
            include_usage=True,
            max_tokens=p.max_output_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            tools=_tools(p.tools),
            tool_choice=_tool_choice(p.tool_choice),
            parallel_tool_calls=p.parallel_tool_calls,
            response_format=_format(p.text),
            reasoning=ir.Reasoning(effort=p.reasoning.effort) if p.reasoning and p.reasoning.effort else None,
            user=p.safety_identifier or p.user,
            service_tier=p.service_tier,
        )


_request_decoder: Final = msgspec.json.Decoder(_Request)
_encode: Final = msgspec.json.Encoder().encode


def _bad(message: str, param: str | None = None, code: str = "invalid_request") -> errors.BadRequest:
    return errors.BadRequest(message, param=param, code=code)


def decode_request(body: bytes) -> Decoded:
    """A Responses create body → ``Decoded``. Raises BadRequest (with the offending parameter)."""
    try:
        r = _request_decoder.decode(body)
    except msgspec.ValidationError as e:
        raise _bad(f"Invalid request: {e}", "body") from None
    except msgspec.DecodeError:
        raise _bad("We could not parse the JSON body of your request.", "body", "invalid_json") from None
    if r.background:
        raise _bad(
            "background responses are not supported by this gateway", "background", "unsupported_parameter"
        )
    if r.conversation is not None:
        raise _bad(
            "conversations are not supported by this gateway; use previous_response_id",
            "conversation",
            "unsupported_parameter",
        )
    if r.tools:
        for i, t in enumerate(r.tools):
            kind = t.get("type")
            if kind != "function":
                what = "built-in tool" if kind in BUILTIN_TOOLS else "tool type"
                raise _bad(
                    f"The {what} '{kind}' is not supported: this gateway serves only function tools "
                    "(the model's provider, not OpenAI, answers here, and nothing would run the tool)",
                    f"tools[{i}].type",
                    "unsupported_tool",
                )
            if not isinstance(t.get("name"), str) or not t["name"]:
                raise _bad("a function tool needs a name", f"tools[{i}].name", "missing_required_parameter")
    _tool_choice(r.tool_choice)  # checked now: a bad choice is the client's 400 before anything is read
    _format(r.text)
    items = _items(r.input)
    instructions = ir.Message("system", [ir.TextPart(r.instructions)]) if r.instructions else None
    messages = _messages(items)
    if not messages and r.previous_response_id is None:
        raise _bad("input must not be empty", "input", "missing_required_parameter")
    return Decoded(r, instructions, messages, items)


def _items(inp: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input as items, each with an id and its ``type`` (a bare message gets ``type: message``)."""
    if isinstance(inp, str):
        if not inp:
            return []
        return [
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": inp}],
            }
        ]
    out = []
    for i, item in enumerate(inp):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise _bad(
                    f"input[{i}].role must be user, assistant, system or developer", f"input[{i}].role"
                )
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if role == "assistant" else "input_text"
                content = [
                    {"type": part, "text": content, **({"annotations": []} if role == "assistant" else {})}
                ]
            elif not isinstance(content, list):
                raise _bad(f"input[{i}].content must be a string or a list", f"input[{i}].content")
            prefix = "msg"
            item = {
                **item,
                "type": "message",
                "content": content,
                "status": item.get("status") or "completed",
            }
        elif kind == "function_call":
            for f in ("call_id", "name"):
                if not isinstance(item.get(f), str):
                    raise _bad(f"input[{i}].{f} is required", f"input[{i}].{f}", "missing_required_parameter")
            prefix = "fc"
            item = {
                **item,
                "arguments": item.get("arguments") or "{}",
                "status": item.get("status") or "completed",
            }
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(
                    f"input[{i}].call_id is required", f"input[{i}].call_id", "missing_required_parameter"
                )
            prefix = "fco"
            item = {**item, "status": item.get("status") or "completed"}
        elif kind == "reasoning":
            prefix = "rs"
            item = {**item, "summary": item.get("summary") or []}
        else:
            raise _bad(
                f"input items of type '{kind}' are not supported by this gateway",
                f"input[{i}].type",
                "unsupported_input_item",
            )
        if not isinstance(item.get("id"), str):
            item["id"] = new_id(prefix)
        out.append(item)
    return out


def _image(c: dict[str, Any], where: str) -> ir.ImagePart:
    url = c.get("image_url")
    detail = c.get("detail")
    if not isinstance(url, str):
        raise _bad("an input_image needs image_url (file ids are not supported here)", where)
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise _bad("an image data URL must be data:<media type>;base64,<data>", where)
        return ir.ImagePart(data=data, media_type=media_type, detail=detail)
    if not url.startswith(("https://", "http://")):
        raise _bad("an image URL must be http(s) or a base64 data URL", where)
    return ir.ImagePart(url=url, detail=detail)


def _file(c: dict[str, Any], where: str) -> ir.DocumentPart:
    data = c.get("file_data")
    if isinstance(data, str):
        media_type = None
        if data.startswith("data:"):
            head, _, data = data[5:].partition(",")
            media_type = head.partition(";")[0] or None
        return ir.DocumentPart(
            data=data, media_type=media_type or "application/pdf", filename=c.get("filename")
        )
    if isinstance(c.get("file_url"), str):
        return ir.DocumentPart(url=c["file_url"], filename=c.get("filename"))
    if isinstance(c.get("file_id"), str):
        return ir.DocumentPart(file_id=c["file_id"], filename=c.get("filename"))
    raise _bad("an input_file needs file_data, file_url or file_id", where)


def _content(content: list[Any], where: str) -> list[ir.Part]:
    parts: list[ir.Part] = []
    for j, c in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = c.get("type") if isinstance(c, dict) else None
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(c.get("text"), str):
                raise _bad("a text part needs text", at)
            parts.append(ir.TextPart(c["text"]))
        elif kind == "refusal":
            parts.append(ir.TextPart(str(c.get("refusal") or "")))
        elif kind == "input_image":
            parts.append(_image(c, at))
        elif kind == "input_file":
            parts.append(_file(c, at))
        else:
            raise _bad(f"content parts of type '{kind}' are not supported", at, "unsupported_content")
    return parts


def _output(output: Any) -> list[ir.TextPart | ir.ImagePart | ir.DocumentPart]:
    if isinstance(output, str):
        return [ir.TextPart(output)] if output else []
    if isinstance(output, list):
        return [
            p
            for p in _content(output, "output")
            if isinstance(p, ir.TextPart | ir.ImagePart | ir.DocumentPart)
        ]
    raise _bad("function_call_output.output must be a string or a list of parts", "input")


def _reasoning_part(item: dict[str, Any]) -> ir.Part | None:
    enc = item.get("encrypted_content")
    if isinstance(enc, str) and enc.startswith(_REDACTED):
        return ir.RedactedThinkingPart(enc[len(_REDACTED) :])
    texts = [c.get("text", "") for c in item.get("content") or () if isinstance(c, dict)]
    if not texts:
        texts = [s.get("text", "") for s in item.get("summary") or () if isinstance(s, dict)]
    if not isinstance(enc, str):
        return None  # unsigned reasoning from elsewhere: no provider can verify it, not sent
    return ir.ThinkingPart("".join(str(t) for t in texts), enc)


def _messages(items: list[dict[str, Any]]) -> list[ir.Message]:
    """Input items → IR messages; an assistant turn gathers its reasoning, text and calls in order."""
    out: list[ir.Message] = []
    turn: list[ir.Part] = []

    def flush() -> None:
        if turn:
            out.append(ir.Message("assistant", list(turn)))
            turn.clear()

    for i, item in enumerate(items):
        kind = item["type"]
        where = f"input[{i}]"
        if kind == "message" and item["role"] == "assistant":
            turn.extend(_content(item["content"], where))
        elif kind == "function_call":
            turn.append(ir.ToolCallPart(item["call_id"], item["name"], item["arguments"]))
        elif kind == "reasoning":
            part = _reasoning_part(item)
            if part is not None:
                turn.append(part)
        elif kind == "function_call_output":
            flush()
            out.append(ir.Message("tool", [ir.ToolResultPart(item["call_id"], _output(item.get("output")))]))
        else:
            flush()
            out.append(ir.Message(item["role"], _content(item["content"], where)))
    flush()
    return out


def _tools(tools: list[dict[str, Any]] | None) -> list[ir.Tool]:
    return [
        ir.Tool(t["name"], t.get("description"), t.get("parameters"), t.get("strict")) for t in tools or ()
    ]


def _tool_choice(tc: str | _FunctionChoice | None) -> ir.ToolChoice | None:
    if tc is None:
        return None
    if isinstance(tc, str):
        if tc not in ("auto", "none", "required"):
            raise _bad("tool_choice must be auto, none, required or a function", "tool_choice")
        return ir.ToolChoice(tc)  # type: ignore[arg-type]
    if tc.type != "function" or not tc.name:
        raise _bad(
            f"tool_choice of type '{tc.type}' is not supported: name a function tool",
            "tool_choice",
            "unsupported_tool",
        )
    return ir.ToolChoice("named", tc.name)


def _format(text: _Text | None) -> ir.ResponseFormat | None:
    f = text.format if text is not None else None
    if f is None or f.type == "text":
        return None
    if f.type == "json_object":
        return ir.ResponseFormat("json_object")
    if f.schema is None:
        raise _bad(
            "text.format json_schema needs a schema", "text.format.schema", "missing_required_parameter"
        )
    return ir.ResponseFormat("json_schema", f.name, f.schema, f.strict, f.description)


# ---- IR → response -------------------------------------------------------------------------------


class _InputDetails(msgspec.Struct, frozen=True):
    cached_tokens: int
    cache_write_tokens: int


class _OutputDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int


class _Usage(msgspec.Struct, frozen=True):
    input_tokens: int
    input_tokens_details: _InputDetails
    output_tokens: int
    output_tokens_details: _OutputDetails
    total_tokens: int


def usage_of(u: ir.Usage) -> _Usage:
    """IR usage in the Responses shape: ``input_tokens`` includes cache reads and writes."""
    return _Usage(
        u.prompt_tokens,
        _InputDetails(u.cache_read_tokens, u.cache_write_tokens),
        u.output_tokens,
        _OutputDetails(u.reasoning_tokens),
        u.total_tokens,
    )


class _Incomplete(msgspec.Struct, frozen=True):
    reason: str


class _Error(msgspec.Struct, frozen=True):
    code: str
    message: str


class ResponseObject(msgspec.Struct, kw_only=True):
    """The ``response`` object (what ``POST``/``GET /v1/responses`` answer and the events carry)."""

    id: str
    created_at: int
    model: str
    status: str
    output: list[dict[str, Any]]
    object: str = "response"
    error: _Error | None = None
    incomplete_details: _Incomplete | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = {}
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = {}
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = []
    top_p: float | None = None
    truncation: str = "disabled"
    usage: _Usage | None = None
    user: str | None = None
    completed_at: int | None = None


_INCOMPLETE: Final[dict[ir.StopReason, str]] = {
    ir.StopReason.MAX_TOKENS: "max_output_tokens",
    ir.StopReason.PAUSE_TURN: "max_output_tokens",
    ir.StopReason.CONTEXT_WINDOW: "max_output_tokens",
    ir.StopReason.REFUSAL: "content_filter",
}


def _text_param(p: _Request) -> dict[str, Any]:
    f = p.text.format if p.text is not None else None
    if f is None:
        return {"format": {"type": "text"}}
    return {"format": msgspec.to_builtins(f)}


def response_object(
    params: Any,
    response_id: str,
    created_at: int,
    model: str,
    output: list[dict[str, Any]],
    status: str,
    usage: ir.Usage | None = None,
    stop: ir.StopReason | None = None,
    error: tuple[str, str] | None = None,
) -> ResponseObject:
    """The ``response`` object of request ``params`` (a ``_Request``) with ``output`` items."""
    p: _Request = params
    reason = _INCOMPLETE.get(stop) if stop is not None else None
    if reason is not None and status == "completed":
        status = "incomplete"
    tc = p.tool_choice
    return ResponseObject(
        id=response_id,
        created_at=created_at,
        model=model,
        status=status,
        output=output,
        error=_Error(*error) if error is not None else None,
        incomplete_details=_Incomplete(reason) if status == "incomplete" and reason else None,
        instructions=p.instructions,
        max_output_tokens=p.max_output_tokens,
        metadata=p.metadata or {},
        parallel_tool_calls=p.parallel_tool_calls is not False,
        previous_response_id=p.previous_response_id,
        reasoning=msgspec.to_builtins(p.reasoning) if p.reasoning is not None else None,
        store=p.store is not False,
        temperature=p.temperature,
        text=_text_param(p),
        tool_choice=msgspec.to_builtins(tc) if tc is not None else "auto",
        tools=[{"strict": None, "description": None, **t} for t in p.tools or ()],
        top_p=p.top_p,
        usage=usage_of(usage) if usage is not None else None,
        user=p.user,
        completed_at=created_at if status in ("completed", "incomplete") else None,
    )


def _message_item(item_id: str, texts: list[str], status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": t, "annotations": []} for t in texts],
    }


def _call_item(item_id: str, p: ir.ToolCallPart, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": p.id,
        "name": p.name,
        "arguments": p.arguments,
        "status": status,
    }


def _reasoning_item(item_id: str, p: ir.ThinkingPart | ir.RedactedThinkingPart) -> dict[str, Any]:
    if isinstance(p, ir.RedactedThinkingPart):
        return {"id": item_id, "type": "reasoning", "summary": [], "encrypted_content": _REDACTED + p.data}
    item: dict[str, Any] = {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": p.text}],
    }
    if p.signature:
        item["encrypted_content"] = p.signature
    return item


def output_items(content: list[ir.Part]) -> list[dict[str, Any]]:
    """An answer's parts as output items (consecutive text parts share one message item)."""
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    for p in content:
        if isinstance(p, ir.TextPart):
            texts.append(p.text)
            continue
        if texts:
            out.append(_message_item(new_id("msg"), texts))
            texts = []
        if isinstance(p, ir.ToolCallPart):
            out.append(_call_item(new_id("fc"), p))
        elif isinstance(p, ir.ThinkingPart | ir.RedactedThinkingPart):
            out.append(_reasoning_item(new_id("rs"), p))
    if texts:
        out.append(_message_item(new_id("msg"), texts))
    return out


def input_items_of(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored input items as ``GET .../input_items`` lists them (reasoning items are not listed there)."""
    return [i for i in items if i.get("type") != "reasoning"]


def encode_error_event(message: str, code: str | None, param: str | None, seq: int) -> bytes:
    return _sse(
        "error", {"type": "error", "code": code, "message": message, "param": param, "sequence_number": seq}
    )


def _sse(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


# ---- IR stream events → Responses events ---------------------------------------------------------
#
# Theory of operation. Every event is ``event: <type>`` + ``data: {..., "sequence_number": n}``, n
# counting from 0 over the whole stream. Each IR block is one output item (a text block one message
# item with one output_text part), so the output index is the number of items opened before it:
#
#   IR event                  Responses events
#   MessageStart              response.created, response.in_progress (status in_progress, no output)
#   BlockStart text           output_item.added (message, in_progress), content_part.added (output_text)
#   BlockDelta text           output_text.delta
#   BlockStop text            output_text.done, content_part.done, output_item.done (message completed)
#   BlockStart tool_call      output_item.added (function_call, arguments "")
#   BlockDelta arguments      function_call_arguments.delta
#   BlockStop tool_call       function_call_arguments.done, output_item.done
#   BlockStart thinking       output_item.added (reasoning), content_part.added (reasoning_text)
#   BlockDelta thinking       reasoning_text.delta        (signature deltas are kept for the item)
#   BlockStop thinking        reasoning_text.done, content_part.done, output_item.done (with signature)
#   BlockStart redacted       output_item.added, output_item.done
#   UsageUpdate               - (the latest usage is kept)
#   MessageStop               - ; ``finished`` turns true: the caller stores the answer, then sends
#                             ``terminal()``: response.completed / response.incomplete with the output
#                             and the usage
#   StreamError               error, response.failed (status failed, error code/message)
#
# Nothing but the final answer's parts is kept (the text of each block, for its ``done`` events).


class _Open:
    __slots__ = ("arguments", "id", "kind", "name", "output_index", "signature", "text")

    def __init__(self, kind: str, item_id: str, output_index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.output_index = output_index
        self.text: list[str] = []
        self.arguments: list[str] = []
        self.name = ""
        self.signature: str | None = None


class EventEncoder:
    """IR stream events → Responses SSE bytes, with ``sequence_number`` (see the table above)."""

    def __init__(self, params: Any, response_id: str, created_at: int) -> None:
        self._params = params
        self.response_id = response_id
        self._created_at = created_at
        self._model = params.model
        self._seq = 0
        self._open: dict[int, _Open] = {}
        #: the finished output items, in order, and the IR parts of the answer
        self.output: list[dict[str, Any]] = []
        self.parts: list[ir.Part] = []
        self.usage = ir.Usage()
        self.stop: ir.StopReason | None = None
        self.stop_sequence: str | None = None
        self.finished = False
        self.failed = False
        self._started = False

    def _event(self, kind: str, /, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return _sse(kind, payload)

    def _response(self, status: str, error: tuple[str, str] | None = None) -> dict[str, Any]:
        usage = self.usage if status != "in_progress" else None
        obj = response_object(
            self._params,
            self.response_id,
            self._created_at,
            self._model,
            self.output if status != "in_progress" else [],
            status,
            usage,
            self.stop,
            error,
        )
        return msgspec.to_builtins(obj)  # type: ignore[no-any-return]

    def rewind(self) -> None:
        """Forget a start that was never sent: the next event (or ``fail``) starts the stream again, with
        ``response.created`` at sequence number 0."""
        if not self.output and not self._open:
            self._started = False
            self._seq = 0

    def start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._event("response.created", response=self._response("in_progress")) + self._event(
            "response.in_progress", response=self._response("in_progress")
        )

    def encode(self, event: ir.StreamEvent) -> bytes:
        if self.finished or self.failed:
            return b""
        if isinstance(event, ir.BlockDelta):
            return self._delta(event)
        if isinstance(event, ir.MessageStart):
            if event.model:
                self._model = event.model
            self.usage = event.usage
            return self.start()
        head = self.start()
        if isinstance(event, ir.BlockStart):
            return head + self._block_start(event)
        if isinstance(event, ir.BlockStop):
            return head + self._block_stop(event.index)
        if isinstance(event, ir.UsageUpdate):
            self.usage = event.usage
            return head
        if isinstance(event, ir.MessageStop):
            out = head + b"".join(self._block_stop(i) for i in list(self._open))
            self.stop, self.stop_sequence = event.stop_reason, event.stop_sequence
            self.finished = True
            return out
        return head + self.fail(event.error.message, event.error.code)

    def response(self) -> ir.Response:
        """The whole answer as IR (for the conversation store)."""
        return ir.Response(
            self.response_id, self._model, self.parts, self.stop, self.stop_sequence, self.usage
        )

    def final_object(self) -> dict[str, Any]:
        return self._response("completed")

    def terminal(self) -> bytes:
        """The last event of a finished stream: ``response.completed`` or ``response.incomplete``."""
        obj = self._response("completed")
        name = "response.incomplete" if obj["status"] == "incomplete" else "response.completed"
        return self._event(name, response=obj)

    def fail(self, message: str, code: str | None) -> bytes:
        """An error ends the stream: ``error`` then ``response.failed``."""
        if self.failed:
            return b""
        self.failed = True
        head = self.start()
        rcode = code if code in ("rate_limit_exceeded", "invalid_prompt") else "server_error"
        return (
            head
            + self._event("error", code=code, message=message, param=None)
            + self._event("response.failed", response=self._response("failed", (rcode, message)))
        )

    def _block_start(self, ev: ir.BlockStart) -> bytes:
        index = len(self.output) + len(self._open)
        if ev.kind == "text":
            blk = self._open[ev.index] = _Open("text", new_id("msg"), index)
            return self._event(
                "response.output_item.added",
                output_index=index,
                item=_message_item(blk.id, [], "in_progress"),
            ) + self._event(
                "response.content_part.added",
                item_id=blk.id,
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        if ev.kind == "tool_call":
            blk = self._open[ev.index] = _Open("tool_call", new_id("fc"), index)
            blk.name = ev.name or ""
            blk.text = [ev.id or new_id("call")]
            item = _call_item(blk.id, ir.ToolCallPart(blk.text[0], blk.name, ""), "in_progress")
            return self._event("response.output_item.added", output_index=index, item=item)
        if ev.kind == "thinking":
            blk = self._open[ev.index] = _Open("thinking", new_id("rs"), index)
            item = {"id": blk.id, "type": "reasoning", "summary": [], "status": "in_progress"}
            return self._event("response.output_item.added", output_index=index, item=item) + self._event(
                "response.content_part.added",
                item_id=blk.id,
                output_index=index,
                content_index=0,
                part={"type": "reasoning_text", "text": ""},
            )
        part = ir.RedactedThinkingPart(ev.data or "")
        item = _reasoning_item(new_id("rs"), part)
        self.parts.append(part)
        self.output.append(item)
        return self._event("response.output_item.added", output_index=index, item=item) + self._event(
            "response.output_item.done", output_index=index, item=item
        )

    def _delta(self, ev: ir.BlockDelta) -> bytes:
        blk = self._open.get(ev.index)
        if blk is None:
            return b""
        if ev.kind == "text" and blk.kind == "text":
            blk.text.append(ev.value)
            return self._event(
                "response.output_text.delta",
                item_id=blk.id,
                output_index=blk.output_index,
                content_index=0,
                delta=ev.value,
                logprobs=[],
            )
        if ev.kind == "arguments" and blk.kind == "tool_call":
            blk.arguments.append(ev.value)
            return self._event(
                "response.function_call_arguments.delta",
                item_id=blk.id,
                output_index=blk.output_index,
                delta=ev.value,
            )
        if ev.kind == "thinking" and blk.kind == "thinking":
            blk.text.append(ev.value)
            return self._event(
                "response.reasoning_text.delta",
                item_id=blk.id,
                output_index=blk.output_index,
                content_index=0,
                delta=ev.value,
            )
        if ev.kind == "signature" and blk.kind == "thinking":
            blk.signature = (blk.signature or "") + ev.value
        return b""

    def _block_stop(self, index: int) -> bytes:
        blk = self._open.pop(index, None)
        if blk is None:
            return b""
        at = blk.output_index
        if blk.kind == "text":
            text = "".join(blk.text)
            self.parts.append(ir.TextPart(text))
            item = _message_item(blk.id, [text])
            self.output.append(item)
            part = item["content"][0]
            return (
                self._event(
                    "response.output_text.done",
                    item_id=blk.id,
                    output_index=at,
                    content_index=0,
                    text=text,
                    logprobs=[],
                )
                + self._event(
                    "response.content_part.done", item_id=blk.id, output_index=at, content_index=0, part=part
                )
                + self._event("response.output_item.done", output_index=at, item=item)
            )
        if blk.kind == "tool_call":
            call = ir.ToolCallPart(blk.text[0], blk.name, "".join(blk.arguments) or "{}")
            self.parts.append(call)
            item = _call_item(blk.id, call)
            self.output.append(item)
            return self._event(
                "response.function_call_arguments.done",
                item_id=blk.id,
                output_index=at,
                arguments=call.arguments,
                name=call.name,
            ) + self._event("response.output_item.done", output_index=at, item=item)
        thinking = ir.ThinkingPart("".join(blk.text), blk.signature)
        self.parts.append(thinking)
        item = _reasoning_item(blk.id, thinking)
        self.output.append(item)
        return (
            self._event(
                "response.reasoning_text.done",
                item_id=blk.id,
                output_index=at,
                content_index=0,
                text=thinking.text,
            )
            + self._event(
                "response.content_part.done",
                item_id=blk.id,
                output_index=at,
                content_index=0,
                part={"type": "reasoning_text", "text": thinking.text},
            )
            + self._event("response.output_item.done", output_index=at, item=item)
        )


# ---- the dialect object (gateway.dialects.base) --------------------------------------------------
#
# Unlike the other dialects, a Responses request carries state the engine fetches before the request is
# sent (the stored conversation of ``previous_response_id``) and state written after it (the record,
# before the last event). So the engine makes one ``OpenAIResponses`` per request (``for_request``),
# holding the decoded request, its conversation and its stream encoder; ``OPENAI_RESPONSES``, the
# stateless instance, only names the endpoint for the tables (``gateway.dialects.DIALECT_PATHS``).


class _Stream:
    """The ``StreamEncoder`` the bridge writes IR events to: every event but the last, which the front
    (``gateway.responses.service``) sends once the answer is stored."""

    def __init__(self, encoder: EventEncoder) -> None:
        self.encoder = encoder

    @property
    def done(self) -> bool:
        return self.encoder.finished or self.encoder.failed

    def encode(self, event: ir.StreamEvent) -> bytes:
        return self.encoder.encode(event)

    def rewind(self) -> None:
        """What was encoded was not sent (an attempt that failed before its content): the request's one
        encoder starts again, for the next attempt or the error (``BridgeRelay``)."""
        self.encoder.rewind()


class OpenAIResponses(ClientDialect):
    """The Responses API as a ``ClientDialect``; see the module docstring and the note above."""

    name = "openai_responses"
    endpoint = "responses"
    serves = "chat"

    def __init__(
        self, decoded: Decoded | None = None, previous: list[ir.Message] | None = None, created_at: int = 0
    ) -> None:
        self.decoded = decoded
        self.previous = previous or []
        self.response_id = new_id("resp")
        self.created_at = created_at
        self.encoder = EventEncoder(decoded.params, self.response_id, created_at) if decoded else None
        #: the whole answer given to ``encode_response`` (a non-streamed request) and its response object,
        #: for the store
        self.answer: ir.Response | None = None
        self.stored_object: bytes | None = None

    def for_request(self, decoded: Decoded, previous: list[ir.Message], created_at: int) -> OpenAIResponses:
        return OpenAIResponses(decoded, previous, created_at)

    def decode_request(self, body: bytes) -> ir.Request:
        if self.decoded is None:
            raise errors.BadRequest("a Responses request is decoded by its front")  # never: see above
        return self.decoded.ir_request(self.previous)

    def encode_response(self, resp: ir.Response, created: int) -> bytes:
        """The ``response`` object of a whole answer (its id is the gateway's, not the upstream's)."""
        assert self.decoded is not None
        self.answer = resp
        obj = response_object(
            self.decoded.params,
            self.response_id,
            self.created_at,
            resp.model or self.decoded.params.model,
            output_items(resp.content),
            "completed",
            resp.usage,
            resp.stop_reason,
        )
        self.stored_object = body = _encode(obj)
        return body

    def stream_encoder(self, ctx: Any, created: int) -> _Stream:
        assert self.encoder is not None
        return _Stream(self.encoder)

    def error_body(self, err: errors.GatewayError, request_id: str) -> bytes:
        return err.body  # the Responses API answers errors in OpenAI's shape

    def stream_error(self, err: errors.GatewayError, request_id: str) -> bytes:
        if self.encoder is None:
            return b""
        return self.encoder.fail(err.message, err.code)

    def provider_error_body(self, err: ir.ProviderError, request_id: str) -> bytes:
        return errors.error_body(err.message, err.type, err.code)


OPENAI_RESPONSES: Final = OpenAIResponses()
