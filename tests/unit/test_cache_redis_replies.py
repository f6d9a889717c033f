"""The Redis tier's replies as they come off the socket: a GET's bulk string or nil whole in one read (read
in place), split across reads, several pipelined replies in one read, and values holding CRLF; each
command's future gets its own reply, in order. And the callback path's lookup (``get_cb`` and
``entry_from``) answers as ``get`` does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.cache.redis_tier import RedisTier, TierDown, _Connection, pack_value


class _Transport:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, parts: list[bytes]) -> None:
        self.written += b"".join(parts)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def abort(self) -> None:
        pass


def _bulk(value: bytes | None) -> bytes:
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)


async def _replies(values: list[bytes | None], cuts: list[int]) -> list[Any]:
    conn = _Connection()
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    futs = [conn.send(b"GET") for _ in values]
    wire = b"".join(_bulk(v) for v in values)
    at = 0
    for cut in [*cuts, len(wire)]:
        if cut > at:
            conn.data_received(wire[at:cut])
            at = cut
    await asyncio.sleep(0)
    return [f.result() for f in futs]


@pytest.mark.parametrize("value", [b"rhello", b"", None, b"r\r\n$5\r\nfake\r\n", b"z" + bytes(range(256))])
def test_one_reply_whole_in_one_read(value: bytes | None) -> None:
    assert asyncio.run(_replies([value], [])) == [value]


@pytest.mark.parametrize("cuts", [[1], [2], [4], [5], [9], [1, 3, 7]])
def test_one_reply_split_across_reads(cuts: list[int]) -> None:
    assert asyncio.run(_replies([b"rhello\r\nworld"], cuts)) == [b"rhello\r\nworld"]


@pytest.mark.parametrize("cuts", [[], [3], [12], [12, 13, 20]])
def test_pipelined_replies_keep_their_order(cuts: list[int]) -> None:
    values: list[bytes | None] = [b"ra", None, b"", b"rlonger value\r\n"]
    assert asyncio.run(_replies(values, cuts)) == values


def test_a_reply_read_in_place_then_the_next_through_the_parser() -> None:
    async def go() -> list[Any]:
        conn = _Connection()
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        first = conn.send(b"GET")
        conn.data_received(_bulk(b"rone"))
        second = conn.send(b"GET")
        wire = _bulk(b"rtwo")
        conn.data_received(wire[:3])
        conn.data_received(wire[3:])
        await asyncio.sleep(0)
        return [first.result(), second.result()]

    assert asyncio.run(go()) == [b"rone", b"rtwo"]


def test_the_callback_lookup_answers_as_get_does() -> None:
    async def go() -> tuple[Any, ...]:
        tier = RedisTier("redis://127.0.0.1:1/0", "gw", 1.0, 100)
        conn = _Connection()
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        tier._conn = conn
        replies: list[tuple[object, BaseException | None]] = []

        def keep(value: object, exc: BaseException | None) -> None:
            replies.append((value, exc))

        for k in ("hit", "compressed", "miss", "garbage"):
            assert tier.get_cb(k, keep)
        big = b"x" * 500
        conn.data_received(_bulk(pack_value(b"entry", 100)) + _bulk(pack_value(big, 100)) + _bulk(None)
                           + _bulk(b"?not a value"))
        got = tuple(tier.entry_from(value, exc) for value, exc in replies)
        assert tier.get_cb("k", keep)
        conn.fail(ConnectionResetError("gone"))
        value, exc = replies[-1]
        assert exc is not None
        with pytest.raises(TierDown):
            tier.entry_from(value, exc)
        return (*got, tier.get_cb("k", keep), tier.errors)

    assert asyncio.run(go()) == (b"entry", b"x" * 500, None, None, False, 1)


def test_callback_waiters_get_their_replies_and_failures_in_order() -> None:
    async def go() -> tuple[list[Any], int]:
        tier = RedisTier("redis://127.0.0.1:1/0", "gw", 1.0, 100)
        assert tier.connection is None
        assert tier.get_cb("k", lambda v, e: None) is False  # nothing sent without a connection
        conn = _Connection()
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        tier._conn = conn
        got: list[Any] = []

        def keep(value: object, exc: BaseException | None) -> None:
            try:
                got.append(tier.entry_from(value, exc))
            except TierDown as e:
                got.append(type(e).__name__)

        def broken(value: object, exc: BaseException | None) -> None:
            raise RuntimeError("a bug in a callback")

        assert tier.get_cb("a", keep) and tier.get_cb("b", broken) and tier.get_cb("c", keep)
        conn.data_received(_bulk(pack_value(b"A", 100)) + _bulk(pack_value(b"B", 100)) + _bulk(None))
        assert tier.get_cb("d", keep) and tier.get_cb("e", keep)
        conn.data_received(b"-ERR wrong\r\n")  # an error reply: refused, counted, the tier stays up
        conn.fail(ConnectionResetError("gone"))  # the rest fail: the tier goes down
        return got, tier.errors

    got, errors = asyncio.run(go())
    assert got == [b"A", None, "TierDown", "TierDown"]
    assert errors == 2


def test_an_iterations_commands_go_out_together_in_order() -> None:
    async def go() -> tuple[bytes, bytes]:
        tier = RedisTier("redis://127.0.0.1:1/0", "gw", 1.0, 100)
        conn = _Connection()
        tr = _Transport()
        conn.connection_made(tr)  # type: ignore[arg-type]
        tier._conn = conn
        tier.get_cb("a", lambda v, e: None)
        conn.send(b"*2\r\n$3\r\nGET\r\n$2\r\nbb\r\n")  # a command of the coroutine path (``_call``)
        before = tr.written  # nothing before the iteration's end
        await asyncio.sleep(0)
        return before, tr.written

    before, written = asyncio.run(go())
    assert before == b""
    assert written == b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$2\r\nbb\r\n"
