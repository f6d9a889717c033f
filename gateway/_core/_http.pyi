"""Types of the compiled HTTP/1.1 core; the twin ``http_py`` documents the behaviour."""

from gateway._core.errors import ParseError as ParseError

__all__ = [
    "STATE_BODY", "STATE_HEAD", "STATE_IDLE", "ChunkedDecoder", "ParseError", "Request", "RequestParser",
    "ResponseParser", "build_request", "build_response_head", "chunk_frame", "find_header", "ms_text",
    "reason_phrase", "select_headers",
]

STATE_IDLE: int
STATE_HEAD: int
STATE_BODY: int

def reason_phrase(status: int) -> str: ...

class Request:
    method: str
    path: str
    query: str
    version: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    def __init__(
        self, method: str, path: str, query: str, version: int, headers: list[tuple[bytes, bytes]],
        body: bytes, keep_alive: bool,
    ) -> None: ...
    def header(self, name: bytes) -> bytes | None: ...

class ChunkedDecoder:
    state: int
    remaining: int
    size: int
    parts: list[bytes]
    done: bool
    def __init__(self) -> None: ...
    def feed(self, buf: bytes, pos: int) -> int: ...
    def take(self) -> bytes: ...

def find_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None: ...

class RequestParser:
    max_header_bytes: int
    max_body_bytes: int
    state: int
    def __init__(self, max_header_bytes: int = 16384, max_body_bytes: int = ...) -> None: ...
    @property
    def buffered(self) -> int: ...
    @property
    def expect_continue(self) -> bool: ...
    def feed(self, data: bytes) -> None: ...
    def next_request(self) -> Request | None: ...

class ResponseParser:
    max_header_bytes: int
    head_done: bool
    done: bool
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    def __init__(self, head_only: bool = False, max_header_bytes: int = 65536) -> None: ...
    def header(self, name: bytes) -> bytes | None: ...
    def feed(self, data: bytes) -> None: ...
    def take_body(self) -> bytes: ...
    def feed_eof(self) -> None: ...

def build_response_head(
    status: int, headers: list[tuple[str, str]], content_length: int, keep_alive: bool
) -> bytes: ...
def build_request(head: bytes, request_id: str, body: bytes) -> bytes: ...
def select_headers(
    headers: list[tuple[bytes, bytes]], prefix: bytes, names: tuple[bytes, ...], out: list[tuple[str, str]]
) -> list[tuple[str, str]]: ...
def chunk_frame(data: bytes) -> bytes: ...
def ms_text(us: int) -> str: ...
