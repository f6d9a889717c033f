"""The stream relay of translated upstreams: provider bytes in, OpenAI chunk SSE out, through the IR.

A provider's sans-I/O stream machine (``feed(chunk)`` / ``close()`` → IR events) and the OpenAI dialect's
``ChunkEncoder``, joined: the usage goes to the request's context as it comes (the settle phase reads it
even when the stream fails), an IR ``StreamError`` sets ``error`` (the engine ends the client's stream
with it). A stream that fails before any content (a throttling exception right after its start) gives
nothing at all, not even the role chunk: the engine then counts the attempt as refused before its first
byte, and a routed model fails over.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from gateway import errors, ir
from gateway.dialects import openai_chat
from gateway.providers.anthropic import gateway_error, openai_usage

__all__ = ["IRStreamRelay", "StreamMachine"]


class StreamMachine(Protocol):
    def feed(self, chunk: bytes) -> list[ir.StreamEvent]: ...

    def close(self) -> list[ir.StreamEvent]: ...


class IRStreamRelay:
    """One request's translated stream (``gateway.providers.translator.StreamRelay``)."""

    __slots__ = ("_content", "_ctx", "_encoder", "_machine", "error")

    def __init__(self, ctx: Any, machine: StreamMachine) -> None:
        self._ctx = ctx
        self._machine = machine
        self._encoder = openai_chat.ChunkEncoder(int(time.time()), ctx.include_usage)
        self.error: errors.GatewayError | None = None
        #: a content chunk was produced (before one, an error leaves nothing worth sending)
        self._content = False

    def feed(self, chunk: bytes) -> bytes:
        return self._emit(self._machine.feed(chunk))

    def end(self) -> bytes:
        return self._emit(self._machine.close())

    def _emit(self, events: list[ir.StreamEvent]) -> bytes:
        out: list[bytes] = []
        encode = self._encoder.encode
        for ev in events:
            if isinstance(ev, ir.StreamError):
                self.error = gateway_error(ev.error)
                if not self._content:
                    out.clear()  # only the role chunk so far: the attempt failed before its content
                break
            if isinstance(ev, ir.MessageStart | ir.UsageUpdate):
                self._ctx.usage = openai_usage(ev.usage)
            data = encode(ev)
            if data:
                out.append(data)
                self._content = self._content or not isinstance(ev, ir.MessageStart)
        return b"".join(out)
