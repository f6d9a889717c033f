"""The seam between the cache phase and a client dialect: the dialect's codec.

Entries are stored dialect-neutral (an ``ir.Response`` in ``gateway.cache.phase.CacheEntry``); a codec
is what one client dialect adds around them, and the phase picks it by the request's endpoint
(``gateway.cache.phase.CODECS``)::

    codec method          the phase calls it          does
    form(ctx)             on_request                  the request in canonical form (gateway.cache.keys)
    canonical(ctx)        on_request                  that form as the key's bytes (sorted keys; OpenAI
                                                      chat's written by the compiled canonicaliser)
    headers(ctx)          on_request                  request headers that change the answer, as a part
                                                      of the key (``keys.header_part``; most: none)
    answer(ctx, body,     on_settle                   the answer the client was sent, as (IR, created);
           assembler)                                 None when it cannot be stored faithfully
    replay(ctx, resp,     a hit                       the entry in the client's dialect, whole or as a
           created)                                   stream as the request asks

and says, as class attributes, what the phase may do around it:

    watches    the answer is read from the client-bound bytes (``ByteCodec``): the phase keeps a whole
               body and watches a stream with the codec's assembler. False: the codec reads the answer
               from the request's own state (OpenAI Responses: its per-request dialect object)
    renders    a hit's bytes depend only on the entry and the form asked for, so the memory tier's
               aliases and the render memo may keep them (False when each hit is new: a Responses hit
               is a new response, with its own id)
    semantic   the semantic tier can read the request's prompt (a ``messages`` list of role and text)
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from gateway import ir
from gateway._core.canon_py import encode_canonical

__all__ = ["Assembler", "ByteCodec", "Codec", "SSEAssembler", "Stored"]

#: an answer as stored: the IR answer and its ``created`` (seconds; 0 when the dialect has none)
Stored = tuple[ir.Response, int]


class Assembler(Protocol):
    """A client-bound stream's bytes in (any split), the answer it spelled out (None: not storable)."""

    def feed(self, data: bytes) -> None: ...

    def result(self) -> Stored | None: ...


class SSEAssembler:
    """The framing every stream assembler shares: the client-bound SSE bytes in any split, each event's
    ``data:`` payloads handed to ``_data`` in order (CRLF lines read as LF), at most ``limit`` bytes in
    all. Past the limit, or when ``_data`` calls ``_give_up``, nothing more is read or kept."""

    __slots__ = ("_broken", "_buf", "_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen = 0
        self._buf = b""
        self._broken = False

    def feed(self, data: bytes) -> None:
        if self._broken:
            return
        self._seen += len(data)
        if self._seen > self._limit:
            self._give_up()
            return
        buf = self._buf + data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")  # a lone CR left at the end joins its LF on the next feed
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            for line in buf[start:end].split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())
                    if self._broken:
                        return
            start = end + 2
        self._buf = buf[start:]

    @property
    def _cut(self) -> bool:
        """The stream cannot be stored: given up, or bytes left after its last whole event."""
        return self._broken or bool(self._buf.strip())

    def _give_up(self) -> None:
        self._broken = True
        self._buf = b""
        self._drop()

    def _data(self, payload: bytes) -> None:
        """One ``data:`` payload."""
        raise NotImplementedError

    def _drop(self) -> None:
        """Free what has been assembled (the stream will not be stored)."""


class Codec:
    """One client dialect's codec. Subclasses set ``name`` (the dialect, in the key) and override."""

    name: ClassVar[str] = ""
    watches: ClassVar[bool] = True
    renders: ClassVar[bool] = True
    semantic: ClassVar[bool] = False

    def form(self, ctx: Any) -> dict[str, Any]:
        raise NotImplementedError

    def canonical(self, ctx: Any) -> bytes:
        """``form`` written with its object keys sorted (the hashed body of the key)."""
        return encode_canonical(self.form(ctx))

    def headers(self, ctx: Any) -> bytes:
        return b""

    def assembler(self, limit: int) -> Assembler:
        raise NotImplementedError

    def answer(self, ctx: Any, body: bytes | None, assembler: Assembler | None) -> Stored | None:
        raise NotImplementedError

    def replay(self, ctx: Any, resp: ir.Response, created: int) -> bytes:
        raise NotImplementedError


class ByteCodec(Codec):
    """A codec that reads the bytes the client was sent: a whole body (``read_whole``) or a stream (its
    ``assembler``, at most ``limit`` bytes)."""

    def read_whole(self, body: bytes) -> Stored | None:
        raise NotImplementedError

    def answer(self, ctx: Any, body: bytes | None, assembler: Assembler | None) -> Stored | None:
        if body is not None:
            return self.read_whole(body)
        if assembler is not None:
            return assembler.result()
        return None
