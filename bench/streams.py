"""Hold thousands of streamed responses open at once: the client of the open-streams scenario.

    python -m bench.streams --port 8080 --streams 5000 --body-file BODY [--key KEY]

Opens ``--streams`` connections (at most ``--ramp`` of them waiting for their first event at a time, so
the servers' accept queues are not flooded), sends one streaming request on each, and counts a stream
as *open* once its response head (200) and some event bytes have arrived. When every stream is open, or
``--ready-timeout`` has passed, it prints one line ``ready {json}`` and keeps reading (and discarding)
while the harness measures the server; it closes every connection when its stdin reaches end of file (or
after ``--hold`` seconds), then prints ``done {json}``. The JSON counts the streams by state.

A stream that ends before the release counts as ``ended_early``: the mock was too fast for the hold (ask
for more chunks or a longer ``chunk_delay_ms``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

from bench.httpwire import ResponseParser, build_request
from bench.procs import HOST, raise_nofile_limit

__all__ = ["main"]


class _Stream(asyncio.Protocol):
    """One streamed request. ``state``: connecting -> sent -> open (head 200 and event bytes arrived), or
    ended_early / status_<code> (the response completed) / closed (the server closed it) / bad_response."""

    def __init__(self, holder: _Holder) -> None:
        self.holder = holder
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.state = "connecting"
        self.opened = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport.write(self.holder.request)
        self.state = "sent"

    def _settle(self, state: str) -> None:
        self.state = state
        if not self.opened.done():
            self.opened.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.holder.bytes_in += len(data)
        try:
            done = self.parser.feed(data)
        except ValueError:
            self._settle("bad_response")
            assert self.transport is not None
            self.transport.abort()
            return
        if done:
            self._settle("ended_early" if done[0] == 200 else f"status_{done[0]}")
        elif self.state == "sent" and self.parser.status == 200 and self.parser.body_bytes > 0:
            self._settle("open")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.holder.releasing and self.state in ("connecting", "sent", "open"):
            self._settle("closed")


class _Holder:
    def __init__(self, port: int, request: bytes, streams: int, ramp: int) -> None:
        self.port = port
        self.request = request
        self.n = streams
        self.ramp = ramp
        self.streams: list[_Stream] = []
        self.connect_failed = 0
        self.connect_errors = 0
        self.bytes_in = 0
        self.releasing = False

    async def _one(self, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        async with gate:  # at most ``ramp`` streams between connect and their first event
            for attempt in range(3):
                try:
                    _, s = await loop.create_connection(lambda: _Stream(self), HOST, self.port)
                    break
                except OSError:
                    self.connect_errors += 1
                    await asyncio.sleep(0.05 * (attempt + 1))
            else:
                self.connect_failed += 1
                return
            self.streams.append(s)
            try:
                await asyncio.wait_for(asyncio.shield(s.opened), timeout=30.0)
            except TimeoutError:
                pass  # still "sent": counted as such

    async def open_all(self, timeout: float) -> float:
        gate = asyncio.Semaphore(self.ramp)
        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(self._one(gate)) for _ in range(self.n)]
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        return time.monotonic() - t0

    def release(self) -> None:
        self.releasing = True
        for s in self.streams:
            if s.transport is not None:
                s.transport.abort()

    def summary(self) -> dict[str, Any]:
        states = Counter(s.state for s in self.streams)
        if self.connect_failed:
            states["connect_failed"] = self.connect_failed
        return {"requested": self.n, "open": states["open"], "states": dict(states),
                "connect_errors": self.connect_errors, "bytes_in": self.bytes_in}


async def _main(args: argparse.Namespace) -> int:
    body = Path(args.body_file).read_bytes()
    request = build_request("POST", args.path, f"{HOST}:{args.port}", body, key=args.key)
    holder = _Holder(args.port, request, args.streams, args.ramp)
    took = await holder.open_all(args.ready_timeout)
    print("ready " + json.dumps({**holder.summary(), "open_seconds": round(took, 3)}), flush=True)
    loop = asyncio.get_running_loop()
    eof = loop.create_future()

    def on_stdin() -> None:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except BlockingIOError:
            return
        if not data and not eof.done():
            eof.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    try:
        await asyncio.wait_for(eof, timeout=args.hold)
    except TimeoutError:
        pass
    loop.remove_reader(sys.stdin.fileno())
    still_open = holder.summary()["open"]
    holder.release()
    await asyncio.sleep(0.1)
    print("done " + json.dumps({**holder.summary(), "open_at_release": still_open}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.streams",
                                description="Hold many streamed responses open; see the module's docstring.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--body-file", required=True, help="the streaming request's JSON body")
    p.add_argument("--key", help="sent as Authorization: Bearer KEY")
    p.add_argument("--streams", type=int, default=5000)
    p.add_argument("--ramp", type=int, default=200, help="streams waiting for their first event at a time")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to open them all")
    p.add_argument("--hold", type=float, default=600.0, help="release after this long at the latest")
    args = p.parse_args(argv)
    raise_nofile_limit(args.streams + 1024)
    try:
        import uvloop

        return uvloop.run(_main(args))
    except ImportError:
        return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
