"""Serving a prompt: its REST endpoint, its ``prompt:NAME`` model in the chat and Messages dialects, the
catalogue.

A prompt call becomes an ordinary chat completions request and runs the engine's own pipeline (access,
limits and budgets, routing, the upstream, the call record, metrics), so that nothing applies to a model
call that does not apply to a prompt call:

    step                        | does                                             | fails with
    ----------------------------+--------------------------------------------------+-----------------------
    authenticate                | the key (as for /v1/chat/completions)            | 401, 403
    scope                       | the key's and tenant's ``models`` allow           | 403 prompt_not_allowed
                                | ``prompt:NAME``; the subscription when required  | 403 subscription_*
    parse                       | the variables (and ``stream``) from the body     | 400 invalid_json
    choose                      | the version (live, or the split's; table.py)     |
    validate                    | the variables against the input schema           | 400 invalid_variables
    render                      | the messages, as data (render.py)                | 400 missing_variable
    chat                        | the chat body -> the engine's chat pipeline, its | what a chat call fails
                                | answer captured (``_Capture``)                   | with
    check                       | the answer against the output schema; one retry  | 502 output_schema_
                                | (a new call, its own record) when it fails       | mismatch
    answer                      | {"output", "prompt", "version", "usage"}, or the |
                                | chat completion itself (the chat dialect), or as |
                                | Messages (the Messages dialect: messages.py)     |

The key's scope for the underlying model is not asked: publishing a prompt grants its callers that model
through that prompt only. The call record of each call names the prompt and version (``prompt``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import msgspec

from gateway import errors
from gateway._core.jsoncheck import TOO_DEEP, KeyWatch, check_json
from gateway.app import Headers, Request
from gateway.dialects.anthropic_messages import ANTHROPIC_MESSAGES
from gateway.phases import Reply
from gateway.prompts.messages import MessagesAnswer
from gateway.prompts.openapi import catalogue, describe, document
from gateway.prompts.responders import InFront
from gateway.wire import MAX_JSON_DEPTH, key_watches

if TYPE_CHECKING:
    from gateway.app import Responder
    from gateway.context import Context
    from gateway.engine import Engine
    from gateway.prompts.render import CompiledVersion
    from gateway.prompts.table import Prompt, PromptTable

__all__ = ["MESSAGES_PATH", "is_prompt_chat", "serve", "serve_chat", "serve_messages"]

_JSON: Headers = [("content-type", "application/json")]
_SSE: Headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_DONE = b"data: [DONE]\n\n"
_ENVELOPE = frozenset(("variables", "stream"))
#: the Messages dialect's path: a request there may name a ``prompt:`` model (``serve_messages``)
MESSAGES_PATH = "/v1/messages"
#: headers of the captured chat answer not passed on (the prompt answer sets its own)
_DROP = frozenset(("content-type", "content-length"))
_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


class _Chat(msgspec.Struct):
    """The fields of a chat completions answer the prompt answer reads."""

    choices: list[dict[str, Any]] = []
    usage: dict[str, Any] | None = None


_chat_decoder = msgspec.json.Decoder(_Chat)
#: the keys of a prompt call's envelope that may appear once (a chat request: those of the chat dialect)
_REST_WATCH = KeyWatch(("variables", "stream"))


def _check_shape(body: bytes, watch: KeyWatch) -> None:
    """The engine's own body checks: nesting depth (bounded memory and stack), keys given twice."""
    problem = check_json(body, MAX_JSON_DEPTH, watch)
    if problem == TOO_DEEP:
        raise errors.BadRequest(f"The JSON body nests arrays and objects more than {MAX_JSON_DEPTH} levels "
                                "deep.", code="invalid_json")
    if problem:
        path = watch.paths[problem - 1]
        raise errors.BadRequest(f"The JSON body repeats the key '{path}'; it must appear once.", param=path,
                                code="duplicate_key")


def is_prompt_chat(body: bytes) -> bool:
    """A chat request that may name a ``prompt:`` model (# PERF: one substring search, no decode)."""
    return body.find(b'"prompt:') >= 0  # PERF: find, not ``in`` (see OpenAIStreamRelay.feed)


# -- entry points ------------------------------------------------------------------------------------------


async def serve(engine: Engine, table: PromptTable, ctx: Context, responder: Responder) -> None:
    """A request under /v1/prompts, to a prompt's custom path, or a Messages request that may name a
    ``prompt:`` model."""
    req = ctx.request
    path = req.path
    if path == MESSAGES_PATH:
        await serve_messages(engine, table, ctx, responder)
        return
    prompt = table.by_path.get(path)
    if prompt is not None:
        if req.method != "POST":
            raise errors.MethodNotAllowed(f"{req.method} is not allowed on {path}; use POST",
                                          headers=[("allow", "POST")])
        await _call(engine, ctx, responder, prompt, "rest")
        return
    rest = path[len("/v1/prompts"):]
    if rest and rest[0] != "/":  # /v1/promptsX: not ours
        raise errors.NotFound(f"Unknown request URL: {req.method} {path}", code="unknown_url")
    if rest in ("", "/"):
        await _catalogue(engine, table, ctx, responder, None, json_doc=False)
        return
    if rest == "/openapi.json":
        await _catalogue(engine, table, ctx, responder, None, json_doc=True)
        return
    name = unquote(rest[1:])
    doc = name.endswith("/openapi.json")
    if doc:
        name = name[: -len("/openapi.json")]
    prompt = table.by_name.get(name)
    if prompt is None or "/" in name:
        await _authenticate(engine, ctx, "models")  # an unknown caller learns nothing of what exists
        raise errors.NotFound(f"The prompt `{name}` does not exist", param="prompt", code="prompt_not_found")
    if doc or req.method == "GET":
        await _catalogue(engine, table, ctx, responder, prompt, json_doc=doc)
        return
    if req.method != "POST":
        raise errors.MethodNotAllowed(f"{req.method} is not allowed on {path}; use POST or GET",
                                      headers=[("allow", "GET, POST")])
    await _call(engine, ctx, responder, prompt, "rest")


async def _named_prompt(engine: Engine, table: PromptTable, ctx: Context, endpoint: str) -> Prompt | None:
    """The prompt a dialect request's ``prompt:NAME`` model names; None when it names another model (or
    the body is not one the dialect's own path would take: that path answers it); 404 for no such
    prompt."""
    try:
        _check_shape(ctx.request.body, key_watches[endpoint])
        head = msgspec.json.decode(ctx.request.body, type=_ChatHead)
    except (msgspec.MsgspecError, errors.BadRequest):
        return None
    if not head.model.startswith("prompt:"):
        return None
    prompt = table.by_name.get(head.model[len("prompt:"):])
    if prompt is None:
        await _authenticate(engine, ctx, endpoint)
        raise errors.NotFound(f"The model `{head.model}` does not exist or you do not have access to it.",
                              param="model", code="model_not_found")
    return prompt


async def serve_chat(engine: Engine, table: PromptTable, ctx: Context, responder: Responder) -> None:
    """A chat completions request, which names a ``prompt:NAME`` model or (rarely: the body only holds the
    text ``"prompt:``) an ordinary one, then served as any chat request."""
    prompt = await _named_prompt(engine, table, ctx, "chat")
    if prompt is None:
        await engine._proxy(ctx, responder)
        return
    await _call(engine, ctx, responder, prompt, "chat")


async def serve_messages(engine: Engine, table: PromptTable, ctx: Context, responder: Responder) -> None:
    """A Messages request (``/v1/messages``) which names a ``prompt:NAME`` model or (rarely) an ordinary
    one, then served as any Messages request. The prompt's call is a chat call (``ctx.dialect`` None
    while it runs) whose answer reaches the client as Messages (``MessagesAnswer``); an error raised
    past it is answered in the Messages dialect."""
    ctx.dialect = ANTHROPIC_MESSAGES
    prompt = await _named_prompt(engine, table, ctx, "messages")
    if prompt is None:
        await engine._dialect_request(ctx, responder, "messages", ANTHROPIC_MESSAGES)
        return
    ctx.dialect = None
    try:
        await _call(engine, ctx, MessagesAnswer(responder, ctx.request_id), prompt, "messages")
    except errors.GatewayError:
        ctx.dialect = ANTHROPIC_MESSAGES
        raise


class _ChatHead(msgspec.Struct):
    model: str = ""


# -- the call ------------------------------------------------------------------------------------------------


async def _authenticate(engine: Engine, ctx: Context, endpoint: str) -> Any:
    access = engine._access
    if access is None:
        ctx.endpoint = endpoint
        return None
    return await access.check(ctx, endpoint)


def _check_scope(engine: Engine, key: Any, prompt: Prompt) -> None:
    if key is None:
        return
    scope = prompt.scope
    if not key.unrestricted and (not key.models.allows(scope) or not key.tenant.models.allows(scope)):
        raise errors.PermissionDenied(f"The API key {key.id} may not use the prompt `{prompt.name}`.",
                                      param="prompt", code="prompt_not_allowed")
    access = engine._access
    if prompt.approval and access is not None:
        access._check_subscription(key, scope)


class _Input(msgspec.Struct):
    variables: Any
    stream: bool
    stream_options: Any = None


def _rest_input(body: bytes) -> _Input:
    """``{"variables": {...}, "stream": bool}``, or the variables object itself."""
    try:
        obj = _decode.decode(body) if body else None
    except msgspec.DecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise errors.BadRequest("The body must be a JSON object: the variables, or {\"variables\": {...}}",
                                code="invalid_json")
    if "variables" in obj and obj.keys() <= _ENVELOPE:
        stream = obj.get("stream", False)
        if not isinstance(stream, bool):
            raise errors.BadRequest("stream must be true or false", param="stream", code="invalid_type")
        return _Input(obj["variables"], stream)
    return _Input(obj, False)


def _chat_input(body: bytes, refused: tuple[str, ...] = ("messages",)) -> _Input:
    obj = _decode.decode(body)  # the engine's check_json has not run: decode errors are answered below
    if not isinstance(obj, dict):
        raise errors.BadRequest("The body must be a JSON object", code="invalid_json")
    for name in refused:
        if obj.get(name):
            raise errors.BadRequest(f"A prompt model takes no {name}: send its variables in prompt_variables",
                                    param=name, code="invalid_request")
    stream = obj.get("stream") or False
    if not isinstance(stream, bool):
        raise errors.BadRequest("stream must be true or false", param="stream", code="invalid_type")
    return _Input(obj.get("prompt_variables", {}), stream, obj.get("stream_options"))


def _messages_input(body: bytes) -> _Input:
    """A Messages body: ``prompt_variables`` and ``stream`` (``max_tokens`` and the sampling fields are
    the version's; no ``messages`` or ``system``). A stream asks for usage: ``message_delta`` carries it."""
    given = _chat_input(body, ("messages", "system"))
    return _Input(given.variables, given.stream, {"include_usage": True})


#: each front's body: (the keys that may appear once, how the input is read)
_FRONTS: dict[str, tuple[KeyWatch, Any]] = {
    "rest": (_REST_WATCH, _rest_input),
    "chat": (key_watches["chat"], _chat_input),
    "messages": (key_watches["messages"], _messages_input),
}


def _chat_body(version: CompiledVersion, messages: list[dict[str, str]], given: _Input, rest: bool) -> bytes:
    body: dict[str, Any] = {"model": version.model, "messages": messages, **version.params}
    if given.stream:
        body["stream"] = True
        if rest:
            body["stream_options"] = {"include_usage": True}
        elif isinstance(given.stream_options, dict):
            body["stream_options"] = given.stream_options
    return _encode(body)


async def _call(engine: Engine, ctx: Context, responder: Responder, prompt: Prompt, front: str) -> None:
    """The prompt's chat call; ``front``: ``rest`` (its own endpoint), ``chat`` or ``messages`` (a
    dialect's ``prompt:NAME`` model)."""
    rest = front == "rest"
    watch, read_input = _FRONTS[front]
    key = await _authenticate(engine, ctx, "chat")
    _check_scope(engine, key, prompt)
    _check_shape(ctx.request.body, watch)
    try:
        given = read_input(ctx.request.body)
    except msgspec.DecodeError:
        raise errors.BadRequest("We could not parse the JSON body of your request.",
                                code="invalid_json") from None
    req = ctx.request
    version = prompt.choose(key.id if key is not None else None, req.header(b"x-request-id"))
    ctx.prompt = f"{prompt.name}@{version.name}"
    version.check_input(given.variables)
    messages = version.render(given.variables)
    inner = Request("POST", req.path, req.query, req.version, req.headers,
                    _chat_body(version, messages, given, rest), req.keep_alive)
    ctx.request = inner
    ctx.body = inner.body
    if given.stream:
        if rest:
            await engine._proxy(ctx, _TextStream(responder, version))
        else:
            await engine._proxy(ctx, responder)  # the chat stream as is (not checked: docs/prompts.md)
        return
    if not rest and version.output_schema is None:
        await engine._proxy(ctx, responder)
        return
    capture = _Capture(responder)
    await engine._proxy(ctx, capture)
    answer, problem = _judge(version, capture)
    if problem is not None:  # once more, as a call of its own (its own limits, its own record)
        first = ctx
        first.error = errors.BadGateway(problem, code="output_schema_mismatch")
        engine._settle(first)
        ctx = engine._context(inner, responder)
        ctx.endpoint = "chat"
        ctx.prompt = first.prompt
        capture = _Capture(responder)
        try:
            await engine._proxy(ctx, capture)
            answer, problem = _judge(version, capture)
            if problem is not None:
                raise errors.BadGateway(
                    f"The model's answer failed the output schema of prompt {prompt.name} version "
                    f"{version.name} twice: {problem}", code="output_schema_mismatch")
            _answer(engine, ctx, responder, prompt, version, capture, answer, rest)
        except errors.GatewayError as exc:
            exc.__traceback__ = None
            ctx.error = exc
            engine._send_error(ctx, responder, exc)
        finally:
            engine._settle(ctx)
        return
    _answer(engine, ctx, responder, prompt, version, capture, answer, rest)


def _judge(version: CompiledVersion, capture: _Capture) -> tuple[Any, str | None]:
    """(the output, None) when the answer is good or an error to pass on; else (_, why it fails)."""
    if capture.status >= 400 or capture.status == 0:
        return None, None
    try:
        chat = _chat_decoder.decode(capture.body)
        content = chat.choices[0]["message"]["content"]
    except (msgspec.MsgspecError, LookupError, TypeError):
        return None, "the answer is not a chat completion with a message"
    if not isinstance(content, str):
        return None, "the answer has no text content"
    output, problem = version.check_output(content)
    return (output, chat.usage), problem


def _answer(engine: Engine, ctx: Context, responder: Responder, prompt: Prompt, version: CompiledVersion,
            capture: _Capture, answer: Any, rest: bool) -> None:
    headers = [(k, v) for k, v in capture.headers if k not in _DROP]
    headers += [("x-gateway-prompt", prompt.name), ("x-gateway-prompt-version", version.name)]
    if capture.status >= 400 or not rest:  # an error, or the chat completion of the chat dialect
        ctype = next((v for k, v in capture.headers if k == "content-type"), "application/json")
        responder.send(capture.status, [("content-type", ctype), *headers], capture.body)
        return
    output, usage = answer
    body = _encode({"output": output, "prompt": prompt.name, "version": version.name, "usage": usage})
    responder.send(capture.status, [*_JSON, *headers], body)


# -- capturing the chat answer -----------------------------------------------------------------------------


class _Capture(InFront):
    """A responder that keeps the engine's one (non-stream) answer, for the prompt to judge; the client's
    connection (``client``) still tells whether it has gone and whether it stays open."""

    def __init__(self, client: Responder) -> None:
        super().__init__(client)
        self.status = 0
        self.headers: Headers = []
        self.body = b""

    @property
    def started(self) -> bool:  # never: the answer is kept, not sent
        return False

    def send(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def start_stream(self, status: int, headers: Headers) -> None:  # never: the chat body asks for none
        raise errors.GatewayError("a prompt's non-stream call was answered with a stream")

    async def write(self, chunk: bytes) -> None:
        raise errors.GatewayError("a prompt's non-stream call was answered with a stream")

    def end_stream(self) -> None:
        pass


class _TextStream:
    """A responder that turns the engine's chat completion stream into the prompt's text stream:

        data: {"text": "..."}                                      one per content delta
        data: {"prompt": ..., "version": ..., "usage": {...}}     at the end
        data: [DONE]

    Error events (``{"error": ...}``) pass as they are; an error before the stream is the error answer."""

    def __init__(self, responder: Responder, version: CompiledVersion) -> None:
        self._out = responder
        self._version = version
        self._pending = b""
        self._usage: Any = None

    @property
    def started(self) -> bool:
        return bool(getattr(self._out, "started", False))

    @property
    def disconnected(self) -> bool:
        return self._out.disconnected

    def _head(self, headers: Headers) -> Headers:
        v = self._version
        return [*[(k, x) for k, x in headers if k not in _DROP], *_SSE,
                ("x-gateway-prompt", v.prompt), ("x-gateway-prompt-version", v.name)]

    def send(self, status: int, headers: Headers, body: bytes) -> None:
        if status >= 400 or not any(k == "content-type" and "event-stream" in x for k, x in headers):
            self._out.send(status, headers, body)
            return
        self._out.send(status, self._head(headers), self._convert(body, True))

    def start_stream(self, status: int, headers: Headers) -> None:
        self._out.start_stream(status, self._head(headers))

    async def write(self, chunk: bytes) -> None:
        out = self._convert(chunk, False)
        if out:
            await self._out.write(out)

    def end_stream(self) -> None:
        self._out.end_stream()

    def _convert(self, chunk: bytes, final: bool) -> bytes:
        data = self._pending + chunk
        events = data.split(b"\n\n")
        self._pending = b"" if final else events.pop()
        out = []
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    out.append(self._event(line[5:].strip()))
        return b"".join(out)

    def _event(self, data: bytes) -> bytes:
        if data == b"[DONE]":
            v = self._version
            tail = _encode({"prompt": v.prompt, "version": v.name, "usage": self._usage})
            return b"data: " + tail + b"\n\n" + _DONE
        try:
            chunk = _decode.decode(data)
        except msgspec.DecodeError:
            return b""
        if not isinstance(chunk, dict):
            return b""
        if "error" in chunk:
            return b"data: " + data + b"\n\n"
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        text = "".join(
            c.get("delta", {}).get("content") or "" for c in chunk.get("choices") or () if isinstance(c, dict)
        )
        return b"data: " + _encode({"text": text}) + b"\n\n" if text else b""


# -- the catalogue -------------------------------------------------------------------------------------------


async def _catalogue(engine: Engine, table: PromptTable, ctx: Context, responder: Responder,
                     prompt: Prompt | None, *, json_doc: bool) -> None:
    req = ctx.request
    if req.method != "GET":
        raise errors.MethodNotAllowed(f"{req.method} is not allowed on {req.path}; use GET",
                                      headers=[("allow", "GET")])
    key = await _authenticate(engine, ctx, "models")
    visible = [p for p in table.by_name.values() if _may_see(key, p)]
    if prompt is not None:
        if prompt not in visible:
            raise errors.NotFound(f"The prompt `{prompt.name}` does not exist", param="prompt",
                                  code="prompt_not_found")
        body = document([prompt]) if json_doc else describe(prompt)
    else:
        body = document(visible) if json_doc else catalogue(visible)
    engine._reply(ctx, responder, Reply(200, _encode(body)))


def _may_see(key: Any, prompt: Prompt) -> bool:
    if key is None or key.unrestricted:
        return True
    return bool(key.models.allows(prompt.scope) and key.tenant.models.allows(prompt.scope))

