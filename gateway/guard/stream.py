"""Output guardrails on a client-bound stream in the OpenAI Chat Completions dialect.

The observer (``gateway.phases.StreamObserver``) sees the stream as the client will get it, in pieces
that need not end on an event. It cuts them into events, and for each ``chat.completion.chunk`` that
carries ``delta.content`` passes the content (JSON-escaped text, never decoded) through the choice's
``Window`` (``gateway.guard.masking``), writing back what the window releases. What a window still
holds when a choice finishes, or at ``[DONE]``, or at the stream's end, goes out in one more content
event built from the choice's last one. A block raises the detector's ``GatewayError``: the engine ends
the stream with an error event in the client's dialect.

Events without content (role, tool calls, usage) pass unchanged, in order.
"""

from __future__ import annotations

import re

from gateway.guard.masking import Masker, Window
from gateway.guard.policy import Side
from gateway.phases import StreamObserver

__all__ = ["ChatStreamGuard"]

_CONTENT = re.compile(rb'"content"\s*:\s*"((?:[^"\\]|\\.)*)"')
_INDEX = re.compile(rb'"index"\s*:\s*(\d+)')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')
_DONE = b"data: [DONE]"


class _Choice:
    __slots__ = ("head", "tail", "window")

    def __init__(self, window: Window) -> None:
        self.window = window
        self.head = b""  # the last content event, around its content: rebuilds a flush event
        self.tail = b""


class ChatStreamGuard(StreamObserver):
    """See the module docstring. ``side``: the answer's detectors (None: restore placeholders only)."""

    __slots__ = ("choices", "masker", "partial", "request_id", "side")

    def __init__(self, side: Side | None, masker: Masker, request_id: str) -> None:
        self.side = side
        self.masker = masker
        self.request_id = request_id
        self.partial = b""
        self.choices: dict[bytes, _Choice] = {}

    def feed(self, data: bytes) -> bytes:
        if self.partial:
            data = self.partial + data
        end = data.rfind(b"\n\n")
        if end < 0:
            self.partial = data
            return b""
        self.partial = data[end + 2:]
        out: list[bytes] = []
        for event in data[:end].split(b"\n\n"):
            self._event(event, out)
        return b"".join(out)

    def end(self) -> bytes:
        out: list[bytes] = []
        self._flush_all(out)
        if self.partial:
            out.append(self.partial)
            self.partial = b""
        return b"".join(out)

    def _event(self, event: bytes, out: list[bytes]) -> None:
        if event.startswith(_DONE):
            self._flush_all(out)
            out.append(event + b"\n\n")
            return
        m = _CONTENT.search(event)
        if m is None:
            if _FINISH.search(event) is not None:
                index = _INDEX.search(event)
                choice = self.choices.get(index.group(1) if index is not None else b"0")
                if choice is not None:
                    self._flush(choice, out)
            out.append(event + b"\n\n")
            return
        index = _INDEX.search(event)
        key = index.group(1) if index is not None else b"0"
        choice = self.choices.get(key)
        if choice is None:
            choice = self.choices[key] = _Choice(Window(self.side, self.masker, self.request_id))
        start, stop = m.span(1)
        head, tail = event[:start], event[stop:]
        text = m.group(1).decode("utf-8", "surrogatepass")
        finished = _FINISH.search(tail) is not None
        released = choice.window.feed(text)
        if finished:
            released += choice.window.flush()
        choice.head, choice.tail = head, tail
        out.append(head + released.encode("utf-8", "surrogatepass") + tail + b"\n\n")

    def _flush(self, choice: _Choice, out: list[bytes]) -> None:
        rest = choice.window.flush()
        if rest and choice.head:
            out.append(choice.head + rest.encode("utf-8", "surrogatepass") + choice.tail + b"\n\n")

    def _flush_all(self, out: list[bytes]) -> None:
        for choice in self.choices.values():
            self._flush(choice, out)
