"""The Responses API front: ``/v1/responses`` served through the engine's chat path, from any provider.

How a ``POST /v1/responses`` runs (``Engine._responses``):

    authenticate (key scope ``responses``)
    decode the Responses body (gateway.dialects.openai_responses) ── 400 in the Responses error shape
    previous_response_id: the stored conversation of that response, this tenant's only ── else 404
    IR request ──chat_bridge.encode_request──▶ a chat request (always streamed upstream, usage included)
    the engine's chat path: parse, access, limits and budgets, routing, the provider's translator
    the chat stream coming back ──ChunkDecoder──▶ IR events ──EventEncoder──▶ Responses events
    at the end of the answer: the record is written (``store``), THEN ``response.completed`` (stream) or
    the ``response`` object (non-stream) is sent

``ResponsesFront`` is the responder the engine writes to for such a request: the engine writes a chat
answer (or a chat error) as for any chat request, and the front re-encodes it in the Responses dialect.
Errors before the answer keep OpenAI's error shape, which the Responses API shares; an error mid-stream
becomes ``error`` + ``response.failed``. Asking upstream for a stream in every case gives one decoding
path and keeps the store write before the last byte: ``write`` may wait, ``send`` may not.

The record (``StoredRecord``) holds the response object as answered, its input items, and the
conversation a next turn continues: the previous conversation, this input and this answer as IR
messages (``instructions`` are not carried over, as OpenAI documents).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from typing import Any, Final

import msgspec

from gateway import errors, ir
from gateway.app import Headers, Responder
from gateway.dialects import chat_bridge
from gateway.dialects import openai_responses as dialect
from gateway.responses.store import ResponseStore, open_response_store
from gateway.store.base import StoreUnavailable

__all__ = ["ResponsesFront", "ResponsesService", "StoredRecord", "tenant_of"]

log = logging.getLogger("gateway.responses")

_encode: Final = msgspec.json.Encoder().encode
_JSON: Final = ("content-type", "application/json")
#: the tenant of requests made without keys ([auth] required = false)
_NO_TENANT: Final = "-"
_MAX_LIST: Final = 100


class StoredRecord(msgspec.Struct, frozen=True):
    #: the ``response`` object as the client was answered
    response: msgspec.Raw
    input_items: list[dict[str, Any]]
    #: previous conversation + this input + this answer, as IR (no instructions)
    conversation: list[ir.Message]
    model: str = ""


_record: Final = msgspec.json.Decoder(StoredRecord)


def tenant_of(ctx: Any) -> str:
    key = ctx.key
    return key.tenant.id if key is not None else _NO_TENANT


def _not_found(response_id: str) -> errors.NotFound:
    return errors.NotFound(
        f"Response with id '{response_id}' not found.", param="response_id", code="response_not_found"
    )


class ResponsesService:
    """One per worker: the response store (opened on first use) and the retention."""

    def __init__(self, config: Any) -> None:
        self._options = config.store
        self.retention: float = config.responses.retention
        self._store: ResponseStore | None = None
        self._opening: asyncio.Lock | None = None

    def reload(self, config: Any) -> None:
        self.retention = config.responses.retention  # the store itself is opened once ([store]: restart)

    async def store(self) -> ResponseStore:
        if self._store is not None:
            return self._store
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._store is None:
                try:
                    self._store = await open_response_store(self._options)
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    raise StoreUnavailable(f"the response store could not be opened: {exc}") from exc
        return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def load(self, tenant: str, response_id: str) -> StoredRecord:
        data = await self._call(self._get(tenant, response_id))
        if data is None:
            raise _not_found(response_id)
        return _record.decode(data)

    async def _get(self, tenant: str, response_id: str) -> bytes | None:
        return await (await self.store()).get(tenant, response_id)

    async def save(self, tenant: str, response_id: str, record: StoredRecord) -> None:
        store = await self._call(self.store())
        await self._call(store.put(tenant, response_id, _encode(record), self.retention))

    @staticmethod
    async def _call(work: Any) -> Any:
        try:
            return await work
        except StoreUnavailable as exc:
            log.warning("response store: %s", exc)
            raise errors.ServiceUnavailable(
                f"The response store is unavailable: {exc}", code="store_unavailable"
            ) from None

    # -- POST -----------------------------------------------------------------------------------------

    async def front(self, ctx: Any, client: Responder) -> ResponsesFront:
        """Decode the Responses request, prepend its previous conversation, and turn ``ctx.body`` into the
        chat request the engine runs; the front the engine then writes the chat answer to."""
        decoded = dialect.decode_request(ctx.body)
        previous: list[ir.Message] = []
        prev_id = decoded.params.previous_response_id
        if prev_id:
            previous = (await self.load(tenant_of(ctx), prev_id)).conversation
        ctx.body = chat_bridge.encode_request(decoded.ir_request(previous), True)
        return ResponsesFront(self, ctx, client, decoded, previous)

    # -- GET / DELETE ---------------------------------------------------------------------------------

    async def answer(self, ctx: Any, method: str, path: str, query: str) -> tuple[int, bytes]:
        """``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``."""
        rest = path[len("/v1/responses/") :]
        response_id, _, tail = rest.partition("/")
        response_id = urllib.parse.unquote(response_id)
        tenant = tenant_of(ctx)
        if not response_id or tail not in ("", "input_items"):
            raise errors.NotFound(f"Unknown request URL: {method} {path}", code="unknown_url")
        allowed = "GET" if tail else "GET, DELETE"
        if method not in allowed.split(", "):
            raise errors.MethodNotAllowed(f"{method} is not allowed on {path}", headers=[("allow", allowed)])
        if method == "DELETE":
            store = await self._call(self.store())
            if not await self._call(store.delete(tenant, response_id)):
                raise _not_found(response_id)
            return 200, _encode({"id": response_id, "object": "response.deleted", "deleted": True})
        record = await self.load(tenant, response_id)
        if not tail:
            return 200, bytes(record.response)
        return 200, _list_page(dialect.input_items_of(record.input_items), query)


def _list_page(items: list[dict[str, Any]], query: str) -> bytes:
    """The list shape of ``input_items``: ``order`` (desc by default), ``limit`` 1..100 (20), ``after``,
    ``before``."""
    q = dict(urllib.parse.parse_qsl(query))
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.BadRequest("order must be asc or desc", param="order")
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        raise errors.BadRequest("limit must be an integer", param="limit") from None
    if not 1 <= limit <= _MAX_LIST:
        raise errors.BadRequest(f"limit must be between 1 and {_MAX_LIST}", param="limit")
    ordered = items if order == "asc" else items[::-1]
    ids = [i.get("id") for i in ordered]
    start = 0
    if "after" in q:
        if q["after"] not in ids:
            raise errors.BadRequest(f"No input item with id '{q['after']}'", param="after")
        start = ids.index(q["after"]) + 1
    end = len(ordered)
    if "before" in q:
        if q["before"] not in ids:
            raise errors.BadRequest(f"No input item with id '{q['before']}'", param="before")
        end = ids.index(q["before"])
        start = max(start, end - limit) if "after" not in q else start
    page = ordered[start : min(end, start + limit)]
    return _encode(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < end,
        }
    )


# -- the front ---------------------------------------------------------------------------------------


class ResponsesFront:
    """The responder of a ``/v1/responses`` request: chat answers in, the Responses dialect out."""

    def __init__(
        self,
        service: ResponsesService,
        ctx: Any,
        client: Responder,
        decoded: dialect.Decoded,
        previous: list[ir.Message],
    ) -> None:
        self._service = service
        self._ctx = ctx
        self._client = client
        self._decoded = decoded
        self._previous = previous
        self._tenant = tenant_of(ctx)
        self.response_id = dialect.new_id("resp")
        self._encoder = dialect.EventEncoder(decoded.params, self.response_id, int(time.time()))
        self._decoder = chat_bridge.ChunkDecoder()
        self._streaming = decoded.stream
        self._headers: Headers = []
        self._status = 200
        #: the client's response has begun (the engine reads it to know whether an error can be answered)
        self.started = False
        #: the engine called end_stream: the client's stream ends once the answer is complete
        self._ended = False
        self._closed = False
        #: the events of a whole answer given to ``send``, emitted by ``complete``
        self._pending: list[ir.StreamEvent] | None = None

    # Responder / CallbackResponder surface ----------------------------------------------------------

    @property
    def disconnected(self) -> bool:
        return self._client.disconnected

    @property
    def keep_alive(self) -> bool:
        return bool(getattr(self._client, "keep_alive", True))

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        if hasattr(self._client, "keep_alive"):
            self._client.keep_alive = value

    @property
    def finished(self) -> bool:
        return self._closed

    def send(self, status: int, headers: Headers, body: bytes) -> None:
        """An error answer passes as it is (the Responses API uses OpenAI's error shape); a whole chat
        answer (an upstream that answered the stream request with one body) waits for ``complete``."""
        if status >= 400:
            self.started = self._closed = True
            self._client.send(status, headers, body)
            return
        self._status, self._headers = status, _without_type(headers)
        self.started = True
        self._ended = True
        try:
            events = (
                self._decoder.feed(body)
                if body.lstrip().startswith(b"data:")
                else _response_events(chat_bridge.response_from_body(body))
            )
        except (msgspec.DecodeError, msgspec.ValidationError):
            events = [
                ir.StreamError(
                    ir.ProviderError(
                        502,
                        "upstream_error",
                        "upstream_invalid_response",
                        "The upstream answer is not a chat completion",
                    )
                )
            ]
        self._pending = events

    def start_stream(self, status: int, headers: Headers) -> None:
        self._status, self._headers = status, _without_type(headers)
        self.started = True
        if self._streaming:
            self._client.start_stream(
                status, [*self._headers, ("content-type", "text/event-stream"), ("cache-control", "no-cache")]
            )

    async def write(self, chunk: bytes) -> None:
        await self._emit(self._decoder.feed(chunk))

    def end_stream(self) -> None:
        self._ended = True
        if self._streaming and (self._encoder.finished or self._encoder.failed) and not self._closed:
            self._closed = True
            self._client.end_stream()

    # completion -------------------------------------------------------------------------------------

    async def complete(self) -> None:
        """After the engine is done with the request: finish what the chat answer left open (a stream cut
        without ``[DONE]``, a whole answer given to ``send``) and end the client's response."""
        if self._closed or not self.started:
            return
        pending = self._pending
        if pending is not None:
            self._pending = None
            await self._emit(pending)
        if not (self._encoder.finished or self._encoder.failed):
            await self._emit(self._decoder.close())
        if self._streaming and not self._closed:
            self._closed = True
            self._client.end_stream()

    def settle(self) -> None:
        """What the call record says: the client's own ``stream`` (the upstream is always streamed)."""
        self._ctx.stream = self._decoded.stream

    async def _emit(self, events: list[ir.StreamEvent]) -> None:
        enc = self._encoder
        out: list[bytes] = []
        for ev in events:
            if isinstance(ev, ir.StreamError):
                err = self._ctx.error
                status = err.status if isinstance(err, errors.GatewayError) else ev.error.status
                await self._fail(out, ev.error.message, ev.error.code, ev.error.type, status)
                return
            data = enc.encode(ev)
            if data:
                out.append(data)
            if enc.finished:
                await self._finish(out)
                return
        if out and self._streaming:
            await self._client.write(b"".join(out))

    async def _finish(self, out: list[bytes]) -> None:
        """The answer is complete: store it, then tell the client."""
        enc = self._encoder
        obj = enc.final_object()
        try:
            if self._decoded.store:
                await self._save(obj, enc.response())
        except errors.GatewayError as exc:
            await self._fail(out, exc.message, exc.code, exc.type, exc.status)
            return
        if self._streaming:
            out.append(enc.terminal())
            await self._client.write(b"".join(out))
            if self._ended and not self._closed:
                self._closed = True
                self._client.end_stream()
            return
        self._closed = True
        self._client.send(self._status, [*self._headers, _JSON], _encode(obj))

    async def _save(self, obj: dict[str, Any], answer: ir.Response) -> None:
        conversation = [*self._previous, *self._decoded.messages]
        if answer.content:
            conversation.append(ir.Message("assistant", answer.content))
        record = StoredRecord(msgspec.Raw(_encode(obj)), self._decoded.items, conversation, answer.model)
        await self._service.save(self._tenant, self.response_id, record)

    async def _fail(self, out: list[bytes], message: str, code: str | None, type_: str, status: int) -> None:
        ctx = self._ctx
        if ctx.error is None:
            ctx.error = errors.BadGateway(message, code=code)
        if self._streaming:
            out.append(self._encoder.fail(message, code))
            await self._client.write(b"".join(out))
            if self._ended and not self._closed:
                self._closed = True
                self._client.end_stream()
            return
        self._encoder.failed = True
        self._closed = True
        ctx.status = status
        self._client.send(status, [*self._headers, _JSON], errors.error_body(message, type_, code))


def _without_type(headers: Headers) -> Headers:
    return [(k, v) for k, v in headers if k not in ("content-type", "cache-control", "content-length")]


def _response_events(resp: ir.Response) -> list[ir.StreamEvent]:
    from gateway.providers.anthropic import response_events

    return response_events(resp)
