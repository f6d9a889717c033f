"""An open-loop HTTP load generator: requests sent at fixed times, latency counted from those times.

    python -m bench.loadgen --port 8080 --rate 5000 --duration 10 [--procs 2] [--cpus 1] [--json PATH]

Why open loop: a closed-loop client (wrk) sends the next request only when a connection is free, so when
the server stalls the client stops sending, and the requests it would have sent during the stall are
never timed ("coordinated omission"): the percentiles then describe the client's patience, not the
server. Here request ``i`` of the run is *due* at ``start + i / rate`` whatever happened before, and its
latency is measured from that due time. When every connection is busy, due requests wait in a backlog and
the wait counts. Requests still unanswered when the run ends are recorded with the time they had waited
(a lower bound) and counted as timeouts.

How it sends: each process runs one event loop (uvloop when installed) with a share of the keep-alive
connections and every ``procs``-th request of the schedule. On every wake-up (a response arrived, or the
timer for the next due request fired) it sends everything due to idle connections. The timer is never
armed for less than a millisecond, so an idle generator sleeps instead of spinning; at the rates of the
benchmarks responses arrive every few hundred microseconds, so sends go out far more often than that.
How late each send was against its due time is recorded as well (the ``lag`` histogram): it is the
generator's own contribution to the latencies, and the first thing to read when the numbers look odd.

Latencies go to an HdrHistogram-style histogram (``bench/histogram.py``) in microseconds; the processes'
histograms are merged by the coordinator. The first ``warmup`` seconds of the schedule are sent but not
recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from bench.histogram import Histogram
from bench.httpwire import ResponseParser, build_request
from bench.procs import HOST, REPO_ROOT, BenchError, die_with_parent, raise_nofile_limit

__all__ = ["due_count", "main", "merge_results", "run_open_loop", "schedule_time", "split_connections"]

#: with the event loop's own timers (no timerfd): never arm for less than this (seconds), else the loop
#: would spin, because they have millisecond resolution
MIN_TIMER_S = 0.001
#: the timerfd fires this long after a request is due, unless a response woke the loop first (it then
#: sends what is due): at high rates responses arrive far more often, so the timer rarely fires and is
#: rarely re-armed (each costs system calls on the generator's CPU); at low rates it bounds the lateness
TIMER_SLACK_S = 0.0002
#: the generator's nice value: it shares the load CPUs with the mock and must not wait for its time slice
NICE = -10
PERCENTILES = (50, 90, 99, 99.9)


class _TimerFd:
    """A one-shot timer on CLOCK_MONOTONIC (``time.monotonic``'s clock) with microsecond resolution: a
    Linux timerfd watched by the event loop. The loop's own timers have millisecond resolution, which
    would make sends up to a millisecond late at low rates."""

    _CLOCK_MONOTONIC = 1
    _TFD_NONBLOCK_CLOEXEC = 0o4000 | 0o2000000
    _TFD_TIMER_ABSTIME = 1

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        import ctypes

        class _Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class _Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]

        libc = ctypes.CDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime
        self.fd = libc.timerfd_create(self._CLOCK_MONOTONIC, self._TFD_NONBLOCK_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)
        self._loop = loop
        self._callback = callback
        loop.add_reader(self.fd, self._ready)

    def arm(self, when: float) -> None:
        value = self._spec.it_value
        sec = int(when)
        value.tv_sec = sec
        value.tv_nsec = max(1, int((when - sec) * 1e9))  # zero would disarm it
        self._settime(self.fd, self._TFD_TIMER_ABSTIME, self._ref, None)

    def _ready(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        self._callback()

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)


# --- the schedule (pure) ------------------------------------------------------------------------------------


def schedule_time(i: int, start: float, rate: float, index: int = 0, procs: int = 1) -> float:
    """Due time of process ``index``'s ``i``-th request: the run's requests are due every ``1/rate``
    seconds from ``start``; process ``index`` of ``procs`` sends those numbered ``index`` mod ``procs``."""
    return start + (i * procs + index) / rate


def due_count(now: float, start: float, rate: float, index: int = 0, procs: int = 1) -> int:
    """How many of process ``index``'s requests are due at ``now`` (the first ``n`` of its schedule)."""
    if now < start:
        return 0
    k = math.floor((now - start) * rate + 1e-9)  # the run's requests 0..k are due
    if k < index:
        return 0
    return (k - index) // procs + 1


def split_connections(total: int, procs: int) -> list[int]:
    """``total`` connections over ``procs`` processes, each at least one."""
    return [max(1, total // procs + (1 if k < total % procs else 0)) for k in range(procs)]


# --- one process --------------------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    __slots__ = ("due", "gen", "parser", "sent", "transport")

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.due = 0.0  # due time of the request in flight (0: idle)
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def send(self, due: float, now: float, request: bytes) -> None:
        self.due = due
        self.sent = now
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            statuses = self.parser.feed(data)
        except ValueError:
            self.gen.protocol_errors += 1
            assert self.transport is not None
            self.transport.abort()
            return
        if statuses:
            now = time.monotonic()
            for status in statuses:
                self.gen.completed(self, status, now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class _Generator:
    def __init__(self, request: bytes, port: int, rate: float, start: float, warmup: float, duration: float,
                 index: int, procs: int, connections: int, timeout: float,
                 precise_timer: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.request = request
        self.port = port
        self.rate = rate
        self.start = start
        self.index = index
        self.procs = procs
        self.n_conns = connections
        self.timeout = timeout
        self.measure_from = start + warmup
        self.end = start + warmup + duration
        self.total = due_count(self.end - 1e-9, start, rate, index, procs)
        self.next_i = 0
        self.backlog: deque[float] = deque()
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.in_flight = 0
        self.latency = Histogram()
        self.service = Histogram()
        self.lag = Histogram()
        self.statuses: Counter[int] = Counter()
        self.sent = 0
        self.completed_n = 0
        self.lost_in_flight = 0
        self.protocol_errors = 0
        self.reconnects = 0
        self.connect_errors = 0
        self.max_backlog = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.timerfd: _TimerFd | None = None
        if precise_timer:
            try:
                self.timerfd = _TimerFd(self.loop, self._fire)
            except (OSError, AttributeError):
                self.timerfd = None
        self.closing = False
        self.finished: asyncio.Future[None] = self.loop.create_future()

    async def connect(self) -> None:
        for _ in range(self.n_conns):
            await self._open()

    async def _open(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self), HOST, self.port)
        except OSError:
            self.connect_errors += 1
            return
        self.conns.add(conn)
        self.idle.append(conn)

    def begin(self) -> None:
        self.pump()

    def pump(self) -> None:
        """Send what is due to idle connections; keep the timer armed for the next due request."""
        if self.closing:
            return
        now = time.monotonic()
        backlog, idle = self.backlog, self.idle
        if self.next_i < self.total:
            due = due_count(now, self.start, self.rate, self.index, self.procs)
            if due > self.next_i:
                due = min(due, self.total)
                period = self.procs / self.rate
                first = self.start + self.index / self.rate
                measure_from = self.measure_from
                lag = self.lag
                for i in range(self.next_i, due):
                    due_t = first + i * period
                    backlog.append(due_t)
                    if due_t >= measure_from:  # how late the generator noticed it was due
                        lag.record(int((now - due_t) * 1e6))
                self.next_i = due
        if len(backlog) > self.max_backlog:
            self.max_backlog = len(backlog)
        while backlog and idle:
            conn = idle.pop()
            conn.send(backlog.popleft(), now, self.request)
            self.sent += 1
            self.in_flight += 1
        if self.next_i < self.total:
            nxt = schedule_time(self.next_i, self.start, self.rate, self.index, self.procs)
            if self.timerfd is not None:
                # PERF: an armed timer that fires within the slack after the next due time is kept
                if not nxt <= self.timer_at <= nxt + TIMER_SLACK_S:
                    self.timer_at = nxt + TIMER_SLACK_S
                    self.timerfd.arm(self.timer_at)
            elif self.timer_at != nxt:
                self.timer_at = nxt
                if self.timer is not None:
                    self.timer.cancel()
                self.timer = self.loop.call_later(max(nxt - now, MIN_TIMER_S), self._fire)
        elif not backlog and self.in_flight == 0 and not self.finished.done():
            self.finished.set_result(None)

    def _fire(self) -> None:
        self.timer = None
        self.timer_at = 0.0  # consumed: the next pump arms it again
        self.pump()

    def completed(self, conn: _Conn, status: int, now: float) -> None:
        self.in_flight -= 1
        self.completed_n += 1
        if conn.due >= self.measure_from:
            self.latency.record(int((now - conn.due) * 1e6))
            self.service.record(int((now - conn.sent) * 1e6))
            self.statuses[status] += 1
        conn.due = 0.0
        self.idle.append(conn)
        self.pump()

    def lost(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.due:
            self.in_flight -= 1
            self.lost_in_flight += 1
            conn.due = 0.0
        if not self.closing:
            self.reconnects += 1
            task = self.loop.create_task(self._open())
            task.add_done_callback(lambda _t: self.pump())

    def close(self, now: float) -> dict[str, int]:
        """Stop; record what is still waiting with the time it waited (a lower bound)."""
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        if self.timerfd is not None:
            self.timerfd.close()
        unanswered = 0
        for conn in list(self.conns):
            if conn.due:
                unanswered += 1
                if conn.due >= self.measure_from:
                    self.latency.record(int((now - conn.due) * 1e6))
            if conn.transport is not None:
                conn.transport.abort()
        unsent = len(self.backlog) + (self.total - self.next_i)
        for due_t in self.backlog:
            if due_t >= self.measure_from:
                self.latency.record(int((now - due_t) * 1e6))
        return {"unanswered": unanswered, "unsent": unsent}

    def result(self, tail: dict[str, int], started_late_s: float) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "index": self.index, "scheduled": self.total, "sent": self.sent, "completed": self.completed_n,
            "latency_us": self.latency.to_dict(), "service_us": self.service.to_dict(),
            "lag_us": self.lag.to_dict(), "statuses": {str(k): v for k, v in self.statuses.items()},
            "lost_in_flight": self.lost_in_flight, "protocol_errors": self.protocol_errors,
            "connect_errors": self.connect_errors, "reconnects": self.reconnects,
            "max_backlog": self.max_backlog, "started_late_s": started_late_s,
            "cpu_s": usage.ru_utime + usage.ru_stime, **tail,
        }


async def _child(request: bytes, port: int, rate: float, start: float, warmup: float, duration: float,
                 index: int, procs: int, connections: int, timeout: float) -> dict[str, Any]:
    gen = _Generator(request, port, rate, start, warmup, duration, index, procs, connections, timeout)
    await gen.connect()
    if not gen.conns:
        raise BenchError(f"load generator: no connection to {HOST}:{gen.port}")
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    late = max(0.0, time.monotonic() - start)
    gen.begin()
    try:
        wait = max(0.0, gen.end - time.monotonic()) + timeout
        await asyncio.wait_for(asyncio.shield(gen.finished), timeout=wait)
    except TimeoutError:
        pass
    tail = gen.close(time.monotonic())
    await asyncio.sleep(0)
    return gen.result(tail, late)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _child_main(args: argparse.Namespace) -> int:
    raise_nofile_limit()
    request = Path(args.request_file).read_bytes()
    loop = _new_loop()
    try:
        result = loop.run_until_complete(_child(
            request, args.port, args.rate, args.start, args.warmup, args.duration, args.index, args.procs,
            args.connections, args.timeout,
        ))
    except BenchError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    finally:
        loop.close()
    print(json.dumps(result), flush=True)
    return 0


# --- the coordinator ----------------------------------------------------------------------------------------


def merge_results(parts: Sequence[dict[str, Any]], *, rate: float, duration: float) -> dict[str, Any]:
    """One result of the processes' results: histograms merged, counters summed, percentiles in ms."""
    latency, service, lag = Histogram(), Histogram(), Histogram()
    statuses: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    for p in parts:
        latency.merge(Histogram.from_dict(p["latency_us"]))
        service.merge(Histogram.from_dict(p["service_us"]))
        lag.merge(Histogram.from_dict(p["lag_us"]))
        statuses.update(p["statuses"])
        for k in ("scheduled", "sent", "completed", "lost_in_flight", "protocol_errors", "connect_errors",
                  "reconnects", "unanswered", "unsent"):
            sums[k] += int(p.get(k, 0))
    measured_ok = sum(statuses.values())
    errors = sums["lost_in_flight"] + sums["protocol_errors"] + sums["unanswered"] + sums["unsent"]
    return {
        "offered_rps": rate,
        "achieved_rps": measured_ok / duration if duration > 0 else 0.0,
        "duration_s": duration,
        "latency_ms": latency.summary(PERCENTILES, scale=0.001),
        "service_ms": service.summary(PERCENTILES, scale=0.001),
        "lag_ms": lag.summary(PERCENTILES, scale=0.001),
        "statuses": dict(statuses),
        "errors": errors,
        "max_backlog": max((int(p.get("max_backlog", 0)) for p in parts), default=0),
        "started_late_s": max((float(p.get("started_late_s", 0.0)) for p in parts), default=0.0),
        "generator_cpu_s": sum(float(p.get("cpu_s", 0.0)) for p in parts),
        **dict(sums),
        "latency_hist_us": latency.to_dict(),
    }


def _child_setup(nice: int) -> None:  # pragma: no cover - runs in the child between fork and exec
    die_with_parent()
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)


def run_open_loop(*, port: int, request: bytes, rate: float, duration: float, warmup: float = 1.0,
                  connections: int = 64, procs: int = 1, cpus: str | None = None, taskset: str | None = None,
                  timeout: float = 5.0, nice: int = NICE) -> dict[str, Any]:
    """Run ``procs`` generator processes (pinned to ``cpus`` with ``taskset`` when given) and merge them.

    ``nice``: the generator processes' scheduling priority (negative needs root or CAP_SYS_NICE; ignored
    when not allowed), so that on CPUs shared with the mock a due send or an arrived response is handled
    at once instead of after the mock's time slice."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    with tempfile.NamedTemporaryFile(prefix="bench-loadgen-", suffix=".http", delete=False) as f:
        f.write(request)
        request_path = Path(f.name)
    conns = split_connections(connections, procs)
    start = time.monotonic() + 0.5 + 0.1 * procs  # time to import, connect and wait
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    running: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    try:
        for k in range(procs):
            argv = [sys.executable, "-m", "bench.loadgen", "--child", "--request-file", str(request_path),
                    "--port", str(port), "--rate", repr(rate), "--start", repr(start),
                    "--warmup", repr(warmup), "--duration", repr(duration), "--index", str(k),
                    "--procs", str(procs), "--connections", str(conns[k]), "--timeout", repr(timeout)]
            if cpus is not None and taskset is not None:
                argv = [taskset, "-c", cpus, *argv]
            err = tempfile.TemporaryFile()  # a file, not a pipe: the children are read one after the other
            logs.append(err)
            running.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                            cwd=REPO_ROOT, preexec_fn=functools.partial(_child_setup, nice)))
        parts = []
        limit = warmup + duration + timeout + 30
        for proc, log in zip(running, logs, strict=True):
            out, _ = proc.communicate(timeout=limit)
            try:
                part = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                log.seek(0)
                raise BenchError(f"load generator exited with {proc.returncode}:\n"
                                 f"{log.read().decode(errors='replace')[-2000:]}") from None
            if "error" in part:
                raise BenchError(part["error"])
            parts.append(part)
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
        request_path.unlink(missing_ok=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = merge_results(parts, rate=rate, duration=duration)
    result["procs"] = procs
    result["connections"] = connections
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["generator_cpu_s"] = cpu
    result["generator_cpu_util"] = cpu / (warmup + duration)
    return result


def format_result(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lat, lag = r["latency_ms"], r["lag_ms"]
    lines = [
        f"offered {r['offered_rps']:,.0f} req/s, achieved {r['achieved_rps']:,.0f} req/s over "
        f"{r['duration_s']:g} s; {r['procs']} process(es), {r['connections']} connections; "
        f"generator CPU {r['generator_cpu_util']:.0%} of one core",
        "latency ms (from the due time): " + "  ".join(f"p{p:g} {ms(lat[f'p{p:g}'])}" for p in PERCENTILES)
        + f"  max {ms(lat['max'])}",
        "send lag ms (due -> sent):      " + "  ".join(f"p{p:g} {ms(lag[f'p{p:g}'])}" for p in PERCENTILES),
        f"statuses {r['statuses']}  errors {r['errors']}  max backlog {r['max_backlog']}",
    ]
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen",
                                description="An open-loop HTTP load generator; see the module's docstring.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--body", default='{"model":"mock-1","messages":[{"role":"user","content":"hello"}]}',
                   help="request body (JSON text); POST")
    p.add_argument("--key", help="sent as Authorization: Bearer KEY")
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second (default 1000)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds sent but not recorded (default 1)")
    p.add_argument("--connections", "-c", type=int, default=64, help="keep-alive connections (default 64)")
    p.add_argument("--procs", type=int, default=1, help="generator processes (default 1)")
    p.add_argument("--cpus", help="pin the generator processes (taskset -c syntax)")
    p.add_argument("--timeout", type=float, default=5.0, help="wait this long for answers at the end")
    p.add_argument("--json", metavar="PATH", help="write the merged result")
    # a generator process started by the coordinator
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--request-file", help=argparse.SUPPRESS)
    p.add_argument("--start", type=float, help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child:
        return _child_main(args)
    request = build_request("POST", args.path, f"{HOST}:{args.port}", args.body.encode(), key=args.key)
    taskset = None
    if args.cpus:
        import shutil

        taskset = shutil.which("taskset")
    try:
        result = run_open_loop(port=args.port, request=request, rate=args.rate, duration=args.duration,
                               warmup=args.warmup, connections=args.connections, procs=args.procs,
                               cpus=args.cpus, taskset=taskset, timeout=args.timeout)
    except BenchError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(format_result(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
