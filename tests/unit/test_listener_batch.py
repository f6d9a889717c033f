"""The listener's write batch (``WriteBatch``): writes wait for the end of the loop iteration, each
connection's pieces go out in order in one call, closing and cutting write what is queued first, and a
connection whose answer filled the client's buffer only after it went idle reads again once the client
has read (``resume_writing``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.server.listener import BATCH, HttpProtocol, ListenerState

REQUEST = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"


class Transport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, parts: Any) -> None:
        self.calls.append(("writelines", [bytes(p) for p in parts]))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    @property
    def written(self) -> bytes:
        out = b""
        for kind, data in self.calls:
            if kind == "write":
                out += data
            elif kind == "writelines":
                out += b"".join(data)
        return out


class App:
    """Answers every request at once from ``begin`` with ``body``."""

    def __init__(self, body: bytes = b"ok") -> None:
        self.body = body

    def begin(self, request: Any, responder: Any) -> None:
        responder.send(200, [("content-type", "text/plain")], self.body)
        responder.done()

    async def handle(self, request: Any, responder: Any) -> None:  # pragma: no cover - not used here
        responder.send(200, [], self.body)


def _connection(app: App) -> tuple[HttpProtocol, Transport]:
    state = ListenerState(app, max_header_bytes=8192, max_body_bytes=1 << 20, max_connections=10,  # type: ignore[arg-type]
                          header_timeout=10, body_timeout=10, keepalive_timeout=10)
    proto = HttpProtocol(state)
    tr = Transport()
    proto.connection_made(tr)
    return proto, tr


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_answers_are_written_when_the_iteration_ends_in_one_call_per_connection() -> None:
    async def go() -> tuple[list[Any], list[Any], list[Any]]:
        a, ta = _connection(App(b"A"))
        b, tb = _connection(App(b"B"))
        a.data_received(REQUEST + REQUEST)  # two pipelined requests: two answers for one connection
        b.data_received(REQUEST)
        before = (list(ta.calls), list(tb.calls))
        await asyncio.sleep(0)  # the iteration ends: the batch is written
        return before[0] + before[1], ta.calls, tb.calls

    before, a_calls, b_calls = run(go())
    assert before == []  # nothing was written while the callbacks ran
    assert [k for k, _ in a_calls] == ["writelines"]  # both answers in one call, in order
    assert b"".join(a_calls[0][1]).count(b"HTTP/1.1 200") == 2
    assert [k for k, _ in b_calls] == ["write"] and b_calls[0][1].endswith(b"B")


def test_a_closing_connection_gets_its_queued_answer_first() -> None:
    async def go() -> list[tuple[str, Any]]:
        proto, tr = _connection(App())
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        return tr.calls

    calls = run(go())
    assert [k for k, _ in calls] == ["write", "close"]  # written before the close, not dropped
    assert calls[0][1].startswith(b"HTTP/1.1 200")


def test_a_cut_connection_gets_what_was_queued_before_the_cut() -> None:
    async def go() -> list[tuple[str, Any]]:
        proto, tr = _connection(App())
        BATCH.write(tr, b"first event")
        proto.abort()
        return tr.calls

    assert run(go()) == [("write", b"first event"), ("abort", None)]


def test_reading_goes_on_after_a_pause_that_came_when_the_connection_was_idle() -> None:
    async def go() -> tuple[bool, bool, bytes]:
        proto, tr = _connection(App(b"x" * 100))
        proto.data_received(REQUEST)  # answered at once: the connection is idle, its answer queued
        await asyncio.sleep(0)  # the batch is written; the client's buffer is full:
        proto.pause_writing()
        paused = tr.reading
        proto.resume_writing()  # the client read its answer
        resumed = tr.reading
        proto.data_received(REQUEST)  # the next request is read and answered
        await asyncio.sleep(0)
        return paused, resumed, tr.written

    paused, resumed, written = run(go())
    assert paused is False
    assert resumed is True
    assert written.count(b"HTTP/1.1 200") == 2


@pytest.mark.parametrize("n", [1, 5])
def test_writes_left_by_a_stopped_loop_are_written_by_the_next(n: int) -> None:
    tr = Transport()
    loop = asyncio.new_event_loop()

    def queue_and_stop() -> None:
        for i in range(n):
            BATCH.write(tr, b"%d" % i)
        loop.stop()  # the loop ends with this iteration: the flush it scheduled never runs

    loop.call_soon(queue_and_stop)
    loop.run_forever()
    loop.close()
    assert tr.calls == []

    async def more() -> None:
        BATCH.write(tr, b"next")  # another loop: the leftovers are written first, then this
        await asyncio.sleep(0)

    asyncio.run(more())
    assert tr.written == b"".join(b"%d" % i for i in range(n)) + b"next"


def test_a_large_batch_is_written_at_once_so_backpressure_can_act() -> None:
    async def go() -> tuple[int, int]:
        tr = Transport()
        for _ in range(100):
            BATCH.write(tr, b"x" * 8192)  # 800 KiB in one iteration, as a stream's chunks in a loop
        written_before_the_iteration_ended = len(tr.written)
        await asyncio.sleep(0)
        return written_before_the_iteration_ended, len(tr.written)

    early, total = run(go())
    assert early >= 256 * 1024  # not held until the iteration's end
    assert total == 100 * 8192
