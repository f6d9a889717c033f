"""The Responses API front: ``/v1/responses`` on the engine, from any provider, with its stored state.

How a ``POST /v1/responses`` runs (``Engine._responses_create``):

    authenticate (key scope ``responses``)
    decode the Responses body (gateway.dialects.openai_responses) ── 400 in the Responses error shape
    previous_response_id: the stored conversation of that response, this tenant's only ── else 404
    ctx.dialect = a per-request ``OpenAIResponses`` (the decoded request, its conversation, its encoder)
    the engine's proxy path: parse, access, limits and budgets, routing; the provider's translator asks
    the dialect for the IR request and answers through it (gateway.providers.bridge), as for every dialect
    the answer's end: the record is written (``store``), THEN ``response.completed`` (stream) or the
    ``response`` object (non-stream) is sent

``ResponsesFront`` is the responder the engine writes to for such a request: it passes everything through
and holds back only the answer's last part until the record is stored (``write`` may wait for the store;
``send`` may not, so a whole answer waits for ``complete``, which the engine awaits after the proxy path).

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
from gateway.dialects import openai_responses as dialect_module
from gateway.responses.store import ResponseStore, open_response_store
from gateway.store.base import StoreUnavailable

__all__ = ["MAX_CONVERSATION_BYTES", "ResponsesFront", "ResponsesService", "StoredRecord", "tenant_of"]

log = logging.getLogger("gateway.responses")

_encode: Final = msgspec.json.Encoder().encode
_JSON: Final = ("content-type", "application/json")
#: the tenant of requests made without keys ([auth] required = false)
_NO_TENANT: Final = "-"
_MAX_LIST: Final = 100
#: the most a conversation may weigh (the stored one of ``previous_response_id`` and the new request's
#: body): a chain of turns grows its record with each one, and each record is held whole in memory
MAX_CONVERSATION_BYTES: Final = 32 << 20


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
        """Decode the Responses request and fetch its previous conversation: the request's dialect object
        (``ctx.dialect``, which the translators ask for the IR request) and the front the engine writes
        the answer to."""
        decoded = dialect_module.decode_request(ctx.body)
        previous: list[ir.Message] = []
        prev_id = decoded.params.previous_response_id
        if prev_id:
            data = await self._call(self._get(tenant_of(ctx), prev_id))
            if data is None:
                raise _not_found(prev_id)
            if len(data) + len(ctx.body) > MAX_CONVERSATION_BYTES:
                raise errors.BadRequest(
                    f"The conversation of previous_response_id '{prev_id}' and this input exceed "
                    f"{MAX_CONVERSATION_BYTES >> 20} MiB; start a new conversation",
                    param="previous_response_id", code="conversation_too_large",
                )
            previous = _record.decode(data).conversation
        ctx.dialect = dialect = dialect_module.OPENAI_RESPONSES.for_request(
            decoded, previous, int(time.time())
        )
        return ResponsesFront(self, ctx, client, dialect)

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
        return 200, _list_page(dialect_module.input_items_of(record.input_items), query)


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
    """The responder of a ``/v1/responses`` request: it passes the engine's answer to the client, holding
    back the last part (the whole answer, or ``response.completed``) until the record is stored.

        the engine calls      a streamed request                       a non-streamed request
        send(>= 400, ...)     passed at once (errors are not stored)   passed at once
        send(2xx, ...)        the events of a whole upstream answer:   the response object: held
                              held
        start_stream          passed at once                           -
        write(events)         passed; once the encoder has seen the    -
                              answer's end: store, then the last event
        end_stream            passed once the last event is out        -
        (then) complete()     what was held: store, then send it; a stream that ended without its
                              last event gets ``error`` + ``response.failed``
    """

    def __init__(
        self, service: ResponsesService, ctx: Any, client: Responder, dialect: dialect_module.OpenAIResponses
    ) -> None:
        self._service = service
        self._ctx = ctx
        self._client = client
        self._dialect = dialect
        assert dialect.decoded is not None and dialect.encoder is not None
        self._decoded = dialect.decoded
        self._encoder = dialect.encoder
        self._streaming = self._decoded.stream
        self._tenant = tenant_of(ctx)
        #: a whole 2xx answer given to ``send``, sent by ``complete`` once stored
        self._held: tuple[int, Headers, bytes] | None = None
        #: the client's response has begun (the engine reads it to know whether an error can be answered)
        self.started = False
        self._ended = False
        self._closed = False
        self._terminal_sent = False

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
        self.started = True
        if status >= 400:
            self._closed = True
            self._client.send(status, headers, body)
            return
        self._held = (status, headers, body)

    def start_stream(self, status: int, headers: Headers) -> None:
        self.started = True
        self._client.start_stream(status, headers)

    async def write(self, chunk: bytes) -> None:
        if chunk:
            await self._client.write(chunk)
        if self._encoder.finished and not self._terminal_sent:
            await self._client.write(await self._finish())

    def end_stream(self) -> None:
        self._ended = True
        if self._terminal_sent or self._encoder.failed:
            self._close_stream()

    # completion -------------------------------------------------------------------------------------

    async def complete(self) -> None:
        """After the engine is done with the request: store and send what was held back."""
        if self._closed or not self.started:
            return
        held, self._held = self._held, None
        if held is not None:
            status, headers, body = held
            if self._streaming:
                tail = await self._finish() if self._encoder.finished else b""
                self._closed = True
                self._client.send(status, headers, body + tail)
                return
            try:
                await self._save()
            except errors.GatewayError as exc:
                self._closed = True
                self._ctx.error = exc
                self._ctx.status = exc.status
                self._client.send(exc.status, [_JSON], exc.body)
                return
            self._closed = True
            self._client.send(status, headers, body)
            return
        if self._streaming and not (self._terminal_sent or self._encoder.failed):
            if self._encoder.finished:
                # the answer's end came in a piece that gave the client no bytes (the engine writes only
                # non-empty pieces, so ``write`` never saw it finish): its last event now
                await self._client.write(await self._finish())
            else:
                # the upstream's stream ended without the answer's end and without an error the engine saw
                await self._client.write(
                    self._encoder.fail("The upstream stream ended early", "upstream_stream_error")
                )
        self._close_stream()

    def _close_stream(self) -> None:
        if self._streaming and not self._closed:
            self._closed = True
            self._client.end_stream()

    async def _finish(self) -> bytes:
        """The answer is complete: store it, then the stream's last event (or its failure)."""
        self._terminal_sent = True
        try:
            await self._save()
        except errors.GatewayError as exc:
            self._ctx.error = exc
            return self._encoder.fail(exc.message, exc.code)
        return self._encoder.terminal()

    async def _save(self) -> None:
        if not self._decoded.store:
            return
        d = self._dialect
        answer = d.answer if d.answer is not None else self._encoder.response()
        obj = d.stored_object if d.stored_object is not None else _encode(self._encoder.final_object())
        conversation = [*d.previous, *self._decoded.messages]
        if answer.content:
            conversation.append(ir.Message("assistant", answer.content))
        record = StoredRecord(msgspec.Raw(obj), self._decoded.items, conversation, answer.model)
        await self._service.save(self._tenant, d.response_id, record)
