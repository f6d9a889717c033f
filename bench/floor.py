"""The floor of any answer: the gateway's listener answering a constant, against nginx answering it.

    python -m bench.floor [--rounds 3] [--duration 5] [--server-cpus 0] [--load-cpus 1]

Two servers, each one process on the server CPU, each answering every POST with the same small JSON body
(a ``chat.completion``): the gateway's own front end (``HttpProtocol`` on uvloop, with an app whose
``begin`` sends the constant at once: no engine, no phase, no upstream) and nginx (``return 200``). wrk
drives each in turn from the load CPUs, the rounds alternated (ABBA); the figure is requests per CPU-second
of each server's process (``/proc``'s utime + stime), and their ratio.

What it is for: every answer the gateway gives pays at least this (reading and parsing the request,
writing the response, the loop's callbacks), so no path through the engine can do better per core than
this ratio times nginx ``return``; a bar stated against nginx ``proxy_pass`` (which does about twice the
work of ``return``: a second connection) can be checked against it. docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["BODY", "main", "nginx_conf", "serve"]

BODY = (b'{"id":"chatcmpl-floor","object":"chat.completion","created":1795368548,"model":"mock-1",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}')
_HEADERS = [("content-type", "application/json")]
_REQUEST = '{"model":"mock-1","messages":[{"role":"user","content":"hello there"}]}'


class _ConstantApp:
    """Answers every request with ``BODY`` from ``begin`` (the callback path: no task)."""

    def begin(self, request: object, responder: object) -> None:
        responder.send(200, _HEADERS, BODY)  # type: ignore[attr-defined]
        responder.done()  # type: ignore[attr-defined]

    async def handle(self, request: object, responder: object) -> None:
        responder.send(200, _HEADERS, BODY)  # type: ignore[attr-defined]


def serve(port: int) -> None:
    """The gateway's listener with the constant app, as a worker runs it (uvloop, the heap frozen)."""
    import uvloop

    from gateway.server.listener import HttpProtocol, ListenerState
    from gateway.server.worker import freeze_heap

    async def run() -> None:
        state = ListenerState(_ConstantApp(), max_header_bytes=65536, max_body_bytes=1 << 20,  # type: ignore[arg-type]
                              max_connections=10000, header_timeout=10, body_timeout=10, keepalive_timeout=60)
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: HttpProtocol(state), "127.0.0.1", port, backlog=4096)
        freeze_heap()
        await asyncio.Event().wait()

    uvloop.run(run())


def nginx_conf(tmp: Path, port: int) -> str:
    """One nginx worker answering ``BODY`` to everything on ``port``, its files under ``tmp``."""
    return f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{BODY.decode()}'; }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _wait(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {port}")


def _nginx_worker(master: int) -> int:
    for _ in range(100):
        out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        if out:
            return int(out[0])
        time.sleep(0.05)
    raise SystemExit("bench: the nginx worker did not start")


def _round(port: int, pid: int, lua: Path, duration: float, load_cpus: str, connections: int) -> float:
    before = _ticks(pid)
    out = subprocess.run(
        ["taskset", "-c", load_cpus, "wrk", "-t1", f"-c{connections}", f"-d{duration:g}", "-s", str(lua),
         f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    ticks = _ticks(pid) - before
    m = re.search(r"(\d+) requests in", out)
    if m is None or ticks <= 0:
        raise SystemExit(f"bench: wrk said {out!r}")
    return int(m.group(1)) * os.sysconf("SC_CLK_TCK") / ticks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", "-c", type=int, default=64)
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--load-cpus", default="1")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the gateway side's own process
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    for tool in ("wrk", "nginx", "taskset", "pgrep"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp_s:
        tmp = Path(tmp_s)
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / d).mkdir()
        lua = tmp / "post.lua"
        lua.write_text(f"wrk.method = \"POST\"\nwrk.body = '{_REQUEST}'\n"
                       "wrk.headers[\"Content-Type\"] = \"application/json\"\n")
        gw_port, ngx_port = _free_port(), _free_port()
        (tmp / "nginx.conf").write_text(nginx_conf(tmp, ngx_port))
        gw = subprocess.Popen(["taskset", "-c", args.server_cpus, sys.executable, "-m", "bench.floor",
                               "--serve", str(gw_port)])
        ngx = subprocess.Popen(["taskset", "-c", args.server_cpus, "nginx", "-c", str(tmp / "nginx.conf"),
                                "-p", str(tmp)], stderr=subprocess.DEVNULL)
        try:
            _wait(gw_port)
            _wait(ngx_port)
            targets = {"listener": (gw_port, gw.pid), "nginx": (ngx_port, _nginx_worker(ngx.pid))}
            for port, pid in targets.values():  # warm-up
                _round(port, pid, lua, 1.0, args.load_cpus, args.connections)
            got: dict[str, list[float]] = {name: [] for name in targets}
            for r in range(args.rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for name in order:
                    port, pid = targets[name]
                    got[name].append(_round(port, pid, lua, args.duration, args.load_cpus, args.connections))
                    print(f"round {r + 1}/{args.rounds} {name:<9} {got[name][-1]:>10,.0f} req/CPU-s",
                          file=sys.stderr)
        finally:
            gw.terminate()
            ngx.terminate()
            gw.wait(5)
            ngx.wait(5)
    lw, nx = sorted(got["listener"])[len(got["listener"]) // 2], sorted(got["nginx"])[len(got["nginx"]) // 2]
    print(f"listener (constant from begin) {lw:>10,.0f} req/CPU-s (median of {args.rounds})")
    print(f"nginx return 200               {nx:>10,.0f} req/CPU-s")
    print(f"ratio                          {lw / nx:>10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
