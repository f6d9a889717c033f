"""Output guardrails on a client-bound stream, in the client's dialect.

The observer (``gateway.phases.StreamObserver``) sees the stream as the client will get it, in pieces
that need not end on an event. It cuts them into events, and for each event that carries text passes
the text (JSON-escaped, never decoded) through its choice's (block's) ``Window``
(``gateway.guard.masking``), writing back what the window releases. What a window still holds when its
choice finishes, or at the stream's end, goes out in one more text event built from the choice's last
one. A block raises the detector's ``GatewayError``: the engine ends the stream with an error event in
the client's dialect. Events without text (role, tool calls, usage) pass unchanged, in order.

Where the text is, by dialect (``EventShape``):

    dialect              | text event                      | text field     | choice  | finished by
    ---------------------+---------------------------------+----------------+---------+-----------------
    OpenAI chat          | chat.completion.chunk           | delta.content  | index   | finish_reason,
                         |                                 |                |         | data: [DONE]
    Anthropic Messages   | content_block_delta, text_delta | delta.text     | index   | content_block_stop,
                         |                                 |                |         | message_stop
"""

from __future__ import annotations

import re

from gateway.guard.masking import Masker, Window
from gateway.guard.policy import Side
from gateway.phases import StreamObserver

__all__ = ["ChatStreamGuard"]

_INDEX = re.compile(rb'"index"\s*:\s*(\d+)')


class EventShape:
    """Where a dialect's stream events carry their text (see the module docstring)."""

    __slots__ = ("end", "finish", "only", "text")

    def __init__(self, text: bytes, finish: bytes, end: bytes, only: bytes | None = None) -> None:
        self.text = re.compile(text)
        self.finish = re.compile(finish)
        self.end = end  # an event that begins with this ends the stream: every window is flushed before it
        self.only = only  # the text counts only in events that contain this


_STRING = rb'\s*:\s*"((?:[^"\\]|\\.)*)"'
OPENAI_CHAT = EventShape(rb'"content"' + _STRING, rb'"finish_reason"\s*:\s*"', b"data: [DONE]")
ANTHROPIC_MESSAGES = EventShape(rb'"text"' + _STRING, rb'"content_block_stop"', b"event: message_stop",
                                b'"text_delta"')
#: the shape of each client dialect, by its name (``ctx.dialect.name``; OpenAI chat has none)
SHAPES = {"openai_chat": OPENAI_CHAT, "anthropic_messages": ANTHROPIC_MESSAGES}


class _Choice:
    __slots__ = ("head", "tail", "window")

    def __init__(self, window: Window) -> None:
        self.window = window
        self.head = b""  # the last content event, around its content: rebuilds a flush event
        self.tail = b""


class ChatStreamGuard(StreamObserver):
    """See the module docstring. ``side``: the answer's detectors (None: restore placeholders only)."""

    __slots__ = ("choices", "masker", "partial", "request_id", "shape", "side")

    def __init__(self, side: Side | None, masker: Masker, request_id: str,
                 shape: EventShape = OPENAI_CHAT) -> None:
        self.shape = shape
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
        shape = self.shape
        if event.startswith(shape.end):
            self._flush_all(out)
            out.append(event + b"\n\n")
            return
        m = shape.text.search(event) if shape.only is None or shape.only in event else None
        if m is None:
            if shape.finish.search(event) is not None:
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
        text = m.group(1).decode("utf-8", "surrogateescape")
        finished = shape.finish.search(tail) is not None
        released = choice.window.feed(text)
        if finished:
            released += choice.window.flush()
        choice.head, choice.tail = head, tail
        out.append(head + released.encode("utf-8", "surrogateescape") + tail + b"\n\n")

    def _flush(self, choice: _Choice, out: list[bytes]) -> None:
        rest = choice.window.flush()
        if rest and choice.head:
            out.append(choice.head + rest.encode("utf-8", "surrogateescape") + choice.tail + b"\n\n")

    def _flush_all(self, out: list[bytes]) -> None:
        for choice in self.choices.values():
            self._flush(choice, out)
