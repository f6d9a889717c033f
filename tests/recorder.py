"""A Responder that keeps what the engine answered, for unit tests that drive the engine in process.

Lives in tests/ (on sys.path: the suite's conftest.py is there, outside any package), shared by the
engine, routing and limits tests.
"""

from __future__ import annotations

import json
from typing import Any


class Recorder:
    """The one response (or stream) of a request, as the engine sent it."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.chunks: list[bytes] = []
        self.started = False
        self.finished = False
        self.keep_alive = True

    @property
    def disconnected(self) -> bool:
        return False

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.started = self.finished = True

    def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers = status, headers
        self.started = True

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def end_stream(self) -> None:
        self.finished = True

    def done(self) -> None:
        """The callback path's end of the response (``gateway.app.CallbackResponder``)."""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The OpenAI-shaped error body's ``error`` object."""
        return dict(json.loads(self.body)["error"])

    def events(self) -> list[bytes]:
        """A stream's SSE events, as sent."""
        raw = b"".join(self.chunks)
        return [e for e in raw.split(b"\n\n") if e]
