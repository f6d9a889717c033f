"""Types of the compiled AWS event-stream framing; the twin ``awsevent_py`` documents the behaviour."""

from gateway._core.errors import EventStreamError as EventStreamError

__all__ = [
    "MAX_HEADERS_LENGTH", "MAX_PAYLOAD_LENGTH", "PRELUDE_LENGTH", "EventStreamDecoder", "EventStreamError",
    "Message",
]

PRELUDE_LENGTH: int
MAX_HEADERS_LENGTH: int
MAX_PAYLOAD_LENGTH: int

class Message:
    headers: dict[str, bool | int | bytes | str]
    payload: bytes
    def __init__(self, headers: dict[str, bool | int | bytes | str], payload: bytes) -> None: ...

class EventStreamDecoder:
    max_headers_length: int
    max_payload_length: int
    def __init__(self, max_headers_length: int = ..., max_payload_length: int = ...) -> None: ...
    @property
    def pending(self) -> int: ...
    def feed(self, data: bytes) -> None: ...
    def __iter__(self) -> EventStreamDecoder: ...
    def __next__(self) -> Message: ...
    def close(self) -> None: ...
