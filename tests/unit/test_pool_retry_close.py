"""A stale connection's resend (``OriginPool._retry``) is a task the pool keeps: closing the pool (a worker
stopping) cancels it and fails its request with an UpstreamError, and no task is left pending for the
loop's close to destroy (it logged a traceback: 'Task was destroyed but it is pending')."""

from __future__ import annotations

import asyncio

from gateway.providers.base import UpstreamError
from gateway.server.pool import OriginPool

HOST = "127.0.0.1"
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def test_closing_the_pool_cancels_a_pending_resend() -> None:
    async def go() -> tuple[bool, int, int]:
        connections = 0
        writers: list[asyncio.StreamWriter] = []
        release = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            writers.append(writer)
            first = connections == 1
            await reader.readuntil(b"\r\n\r\n")
            if first:
                writer.write(ANSWER)  # the first request is answered; the connection stays open
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")  # the second request on it: closed unanswered (stale)
                writer.close()
                return
            await release.wait()  # the resend on a new connection is never answered
            writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        pool = OriginPool(f"http://{HOST}:{port}", connect_timeout=10.0)
        try:
            head = pool.build_head("POST", "/v1/chat/completions", [], 0)
            resp = await asyncio.wait_for(pool.send_data(head), 10)
            assert await resp.read() == b"{}"
            resp.close()  # idle in the pool
            second = asyncio.ensure_future(pool.send_data(head))
            for _ in range(500):  # until the resend is under way on its new connection
                if pool._retries and connections == 2:
                    break
                await asyncio.sleep(0.01)
            pending = bool(pool._retries)
            await pool.close()
            failed = 0
            try:
                await asyncio.wait_for(second, 10)
            except UpstreamError:
                failed = 1
            await asyncio.sleep(0)
            return pending, failed, len(pool._retries)
        finally:
            release.set()
            for w in writers:
                w.close()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)

    pending, failed, left = asyncio.run(go())
    assert pending  # the stale connection's request was being resent
    assert failed == 1  # closing the pool failed it, as an upstream error
    assert left == 0  # no resend task outlives the pool
