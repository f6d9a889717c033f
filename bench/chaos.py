"""The chaos soak: a gateway at about half its capacity for a long time, with upstream faults injected,
its config reloaded every minute and a worker stopped every five minutes; then every request is
accounted for.

    python -m bench.chaos [--duration 1800] [--load 0.5] [--reload-every 60] [--kill-every 300]
                          [--kill-signal TERM|KILL] [--workers 2] [--out DIR]

What runs: ``gateway mock`` as the upstream, ``gateway serve`` with call records on (its default) in
front of it, and this process's open-loop client. The client's mix is mostly plain chat, with streams,
embeddings, a routed model with retries, and the mock's failure directives (``!mock`` in the message:
500, 429, a body that is not JSON, a stream cut mid-way, a slow head, an upstream that never answers).
Every request
carries its own ``x-request-id``, so each answer can be matched with its call record.

What is checked at the end:

- **answers**: every request the client sent got a complete HTTP response. A connection closed before
  any byte of the answer is retried once on a new connection (as every HTTP client does for a stale
  keep-alive); such a request counts as *without answer* only if the gateway wrote a record for the
  first try, that is, it reached the engine and its answer was lost.
- **records**: every request that reached the engine has exactly one call record, and every record
  belongs to a request the client sent (none lost, none doubled).
- **memory**: the gateway's RSS (supervisor and workers) after warm-up and at the end.

A worker is stopped with SIGTERM by default: it drains (finishes its requests, writes its records) and
the supervisor starts a new one. ``--kill-signal KILL`` shows the cost of a worker that dies at once:
its requests in flight lose their answers and the records it had not written yet.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.httpwire import ResponseParser, build_request
from bench.procs import (
    HOST,
    Service,
    children,
    free_ports,
    log,
    raise_nofile_limit,
    start_service,
    terminate_as_exit,
    tree_rss_kb,
    wait_ready,
)

__all__ = ["CONFIG", "MIX", "main", "run"]

#: the gateway's config; {mock} is the mock's port, {extra} changes at every reload
CONFIG = """\
[server]
workers = {workers}
drain_timeout = 10.0

[upstream]
read_timeout = 2.0
connect_timeout = 2.0

[providers.up]
type = "openai"
base_url = "http://127.0.0.1:{mock}/v1"

[models.chat]
provider = "up"
upstream_model = "mock-1"

[models.embed]
provider = "up"
upstream_model = "mock-embed-1"
endpoints = ["embeddings"]

[models.routed]
deployments = [
  {{ name = "a", provider = "up", upstream_model = "mock-1" }},
  {{ name = "b", provider = "up", upstream_model = "mock-1" }},
]
retry = {{ max_attempts = 2, base_backoff = 0.01, max_backoff = 0.05 }}

[models."reload-{extra}"]
provider = "up"
upstream_model = "mock-1"
"""

_CHAT = '{{"model":"{model}","messages":[{{"role":"user","content":"{mock}chaos {i}"}}]{extra}}}'
_EMBED = '{{"model":"embed","input":["chaos {i}","soak"]}}'

#: (share in percent, name, model, stream, x-mock directives)
MIX: tuple[tuple[int, str, str, bool, str], ...] = (
    (58, "chat", "chat", False, ""),
    (10, "stream", "chat", True, ""),
    (5, "embeddings", "embed", False, ""),
    (6, "routed", "routed", False, ""),
    (5, "status-500", "chat", False, "status=500"),
    (4, "status-429", "chat", False, "status=429 retry_after=1"),
    (3, "garbage", "chat", False, "garbage=1"),
    (3, "stream-cut", "chat", True, "cut=2"),
    (3, "slow-head", "chat", False, "latency_ms=300"),
    (2, "routed-500", "routed", False, "status=500"),
    (1, "hang", "chat", False, "hang=1"),
)
_PLAN = [entry for entry in MIX for _ in range(entry[0])]
assert len(_PLAN) == 100, "the mix's shares add up to 100"

_ANSWER_TIMEOUT = 30.0


def request_bytes(i: int, port: int) -> tuple[str, bytes]:
    """The ``i``-th request of the mix: its kind and its bytes, with ``x-request-id: chaos-i``."""
    _, kind, model, stream, directives = _PLAN[(i * 37) % 100]  # PERF: a fixed, well-spread order
    if model == "embed":
        body = _EMBED.format(i=i)
        path = "/v1/embeddings"
    else:
        mock = f"!mock {directives} " if directives else ""
        body = _CHAT.format(model=model, i=i, mock=mock, extra=',"stream":true' if stream else "")
        path = "/v1/chat/completions"
    headers = {"x-request-id": f"chaos-{i}"}
    return kind, build_request("POST", path, f"{HOST}:{port}", body.encode(), headers=headers)


@dataclass
class Tally:
    sent: int = 0
    answered: collections.Counter[str] = field(default_factory=collections.Counter)
    by_kind: dict[str, collections.Counter[int]] = field(default_factory=dict)
    #: requests whose connection closed before any byte of an answer (retried once under "<id>-r")
    retried: list[str] = field(default_factory=list)
    #: requests that got no complete answer, even after a retry: request id -> why
    unanswered: dict[str, str] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)


class _NoAnswer(Exception):
    def __init__(self, why: str, got_bytes: bool) -> None:
        super().__init__(why)
        self.got_bytes = got_bytes


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[int, bool]:
    """Send one request on a connection and read its whole answer: its status, and whether the connection
    may carry the next request (nothing of another answer was read with it)."""
    writer.write(data)
    parser = ResponseParser()
    got = False
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            raise _NoAnswer("closed before the answer ended" if got else "closed before any answer", got)
        got = True
        done = parser.feed(chunk)
        if done:
            return done[0], parser.status is None


async def _exchange(port: int, data: bytes) -> int:
    """Send one request on a new connection and read its whole answer; its status."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        return (await _answer(reader, writer, data))[0]
    finally:
        writer.close()


class _Client:
    """A connection per request in flight, reused for the next one while the server keeps it open; at most
    ``max_connections`` at once (a request over that waits for one, and its latency says so), so that a
    slow gateway cannot make the client run out of file descriptors and call that a lost answer."""

    def __init__(self, port: int, tally: Tally, max_connections: int = 4096) -> None:
        self.port = port
        self.tally = tally
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.in_flight = 0
        self.slots = asyncio.Semaphore(max_connections)

    async def _on(self, data: bytes) -> int:
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(HOST, self.port)
        reader, writer = conn
        keep = False
        try:
            status, keep = await _answer(reader, writer, data)
            return status
        finally:
            if keep and not reader.at_eof():
                self.idle.append(conn)
            else:
                writer.close()

    async def one(self, i: int, kind: str, data: bytes) -> None:
        self.in_flight += 1
        rid = f"chaos-{i}"
        started = time.monotonic()
        await self.slots.acquire()
        try:
            try:
                status = await asyncio.wait_for(self._on(data), _ANSWER_TIMEOUT)
            except (_NoAnswer, ConnectionError, OSError) as exc:
                if isinstance(exc, _NoAnswer) and exc.got_bytes:
                    raise
                # a keep-alive connection the server closed as we wrote: retry once, under its own id
                self.tally.retried.append(rid)
                retry = data.replace(rid.encode() + b"\r\n", rid.encode() + b"-r\r\n", 1)
                status = await asyncio.wait_for(_exchange(self.port, retry), _ANSWER_TIMEOUT)
            self.tally.answered[kind] += 1
            self.tally.by_kind.setdefault(kind, collections.Counter())[status] += 1
            self.tally.latencies_ms.append((time.monotonic() - started) * 1000)
        except (TimeoutError, _NoAnswer, ConnectionError, OSError) as exc:
            self.tally.unanswered[rid] = f"{kind}: {type(exc).__name__} {exc}"
        finally:
            self.slots.release()
            self.in_flight -= 1


async def _load(port: int, rate: float, duration: float, tally: Tally, first: int = 0) -> int:
    """Open loop: request ``first + n`` is due at ``n / rate`` s; returns the next request number."""
    client = _Client(port, tally)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    n = 0
    while True:
        now = time.monotonic()
        if now - start >= duration:
            break
        due = int((now - start) * rate) + 1
        while n < due:
            i = first + n
            kind, data = request_bytes(i, port)
            t = asyncio.create_task(client.one(i, kind, data))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            tally.sent += 1
            n += 1
        await asyncio.sleep(min(0.005, max(0.0, (n / rate) - (time.monotonic() - start))))
    if tasks:
        await asyncio.wait(tasks, timeout=_ANSWER_TIMEOUT * 2 + 5)
    for _, w in client.idle:
        w.close()
    return first + n


async def _capacity(port: int, seconds: float, connections: int) -> float:
    """Closed loop over the mix: answers per second the gateway gives with ``connections`` clients."""
    tally = Tally()
    client = _Client(port, tally)
    stop = time.monotonic() + seconds
    counter = iter(range(10**9, 2 * 10**9))

    async def worker() -> None:
        while time.monotonic() < stop:
            i = next(counter)
            kind, data = request_bytes(i, port)
            if kind == "hang":  # closed loop: a request that waits for the read timeout measures nothing
                continue
            await client.one(i, kind, data)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    for _, w in client.idle:
        w.close()
    return sum(tally.answered.values()) / (time.monotonic() - t0)


def _write_config(path: Path, workers: int, mock_port: int, extra: int) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(CONFIG.format(workers=workers, mock=mock_port, extra=extra))
    os.replace(tmp, path)


def read_records(log_path: Path) -> collections.Counter[str]:
    """Call records in a gateway's log (JSON lines among its other lines), counted by request id."""
    seen: collections.Counter[str] = collections.Counter()
    with open(log_path, "rb") as f:
        for line in f:
            if not line.startswith(b"{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            rid = rec.get("request_id") if isinstance(rec, dict) else None
            if isinstance(rid, str) and rid.startswith("chaos-"):
                seen[rid] += 1
    return seen


def account(tally: Tally, records: collections.Counter[str], first: int, last: int) -> dict[str, Any]:
    """Match the client's requests ``first..last-1`` with the gateway's records."""
    expected: set[str] = set()
    lost_answers = dict(tally.unanswered)
    retried = set(tally.retried)  # PERF: a membership test per request of millions
    for i in range(first, last):
        rid = f"chaos-{i}"
        if rid in tally.unanswered:
            if records[rid] or records[rid + "-r"]:
                expected.add(rid if records[rid] else rid + "-r")
            continue
        if rid in retried:
            expected.add(rid + "-r")
            if records[rid]:  # the first try reached the engine: its answer was lost
                expected.add(rid)
                lost_answers[rid] = "reached the engine, connection closed before any answer"
        else:
            expected.add(rid)
    # the capacity probe's ids (chaos-1000000000 and up) are not part of the soak
    ids = {rid for rid in records if int(rid.removeprefix("chaos-").removesuffix("-r")) < 10**9}
    missing = sorted(expected - ids)
    unexpected = sorted(ids - expected)
    doubled = sorted(rid for rid in ids if records[rid] > 1)
    return {
        "requests": last - first,
        "retried_stale_keepalive": len(tally.retried),
        "without_answer": len(lost_answers),
        "without_answer_examples": dict(list(lost_answers.items())[:10]),
        "records": sum(records[rid] for rid in ids),
        "records_missing": len(missing),
        "records_missing_examples": missing[:10],
        "records_unexpected": len(unexpected),
        "records_unexpected_examples": unexpected[:10],
        "records_doubled": len(doubled),
        "records_doubled_examples": doubled[:10],
    }


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _soak(args: argparse.Namespace, gateway: Service, port: int, cfg: Path, mock_port: int,
                rate: float) -> dict[str, Any]:
    tally = Tally()
    rss: list[tuple[float, int]] = []
    events: list[dict[str, Any]] = []
    loop_start = time.monotonic()
    rng = random.Random(7)

    async def chaos() -> None:
        next_reload = args.reload_every
        next_kill = args.kill_every
        next_rss = 0.0
        next_note = 60.0
        extra = 0
        while True:
            await asyncio.sleep(0.5)
            t = time.monotonic() - loop_start
            if t >= next_rss:
                rss.append((round(t, 1), tree_rss_kb(gateway.pid)))
                next_rss += args.rss_every
            if t >= next_note:
                log(f"chaos: {t:.0f} s: {tally.sent:,} sent, {sum(tally.answered.values()):,} answered, "
                    f"{len(tally.unanswered)} without an answer, RSS {rss[-1][1] / 1024:.1f} MB")
                next_note += 60.0
            if t >= next_reload:
                extra += 1
                _write_config(cfg, args.workers, mock_port, extra)
                os.kill(gateway.pid, signal.SIGHUP)
                events.append({"t": round(t, 1), "event": "reload"})
                next_reload += args.reload_every
            if t >= next_kill:
                workers = children(gateway.pid)
                if workers:
                    victim = rng.choice(workers)
                    os.kill(victim, getattr(signal, f"SIG{args.kill_signal}"))
                    events.append({"t": round(t, 1), "event": f"SIG{args.kill_signal} worker {victim}"})
                next_kill += args.kill_every

    chaos_task = asyncio.create_task(chaos())
    try:
        last = await _load(port, rate, args.duration, tally)
    finally:
        chaos_task.cancel()
    rss.append((round(time.monotonic() - loop_start, 1), tree_rss_kb(gateway.pid)))
    return {"tally": tally, "last": last, "rss": rss, "events": events}


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile_limit()
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="chaos-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    mock_port, port = free_ports(2)
    cfg = out_dir / "gateway.toml"
    _write_config(cfg, args.workers, mock_port, 0)
    py = sys.executable
    mock = start_service("mock", [py, "-m", "gateway", "mock", "--port", str(mock_port), "--quiet",
                                  "--workers", str(args.mock_workers)], out_dir)
    gateway = start_service("gateway", [py, "-m", "gateway", "serve", "--config", str(cfg),
                                        "--port", str(port)], out_dir)
    try:
        wait_ready(mock, mock_port, "/healthz")
        wait_ready(gateway, port, "/healthz")
        if args.rate:
            capacity, rate = None, float(args.rate)
        else:
            log(f"chaos: measuring capacity for {args.probe:.0f} s")
            capacity = asyncio.run(_capacity(port, args.probe, args.probe_connections))
            rate = max(1.0, capacity * args.load)
        log(f"chaos: {rate:.0f} req/s for {args.duration:.0f} s (capacity {capacity or 0:.0f} req/s), "
            f"reload every {args.reload_every:.0f} s, SIG{args.kill_signal} a worker every "
            f"{args.kill_every:.0f} s")
        soak = asyncio.run(_soak(args, gateway, port, cfg, mock_port, rate))
        gateway.check_alive()
        healthy = wait_healthy(gateway, port)
    finally:
        gateway.stop(grace=30.0)  # SIGTERM: the workers drain and write their last records
        mock.stop()
    tally: Tally = soak["tally"]
    records = read_records(gateway.log_path)
    result = account(tally, records, 0, soak["last"])
    rss = soak["rss"]
    warm = next((kb for t, kb in rss if t >= args.warmup), rss[0][1])
    result.update({
        "duration_s": args.duration,
        "rate_per_s": round(rate, 1),
        "capacity_per_s": round(capacity, 1) if capacity else None,
        "workers": args.workers,
        "kill_signal": args.kill_signal,
        "events": soak["events"],
        "statuses": {k: dict(v) for k, v in sorted(tally.by_kind.items())},
        "latency_ms_p50": _percentile(tally.latencies_ms, 0.5),
        "latency_ms_p99": _percentile(tally.latencies_ms, 0.99),
        "rss_kb": rss,
        "rss_warm_kb": warm,
        "rss_end_kb": rss[-1][1],
        "rss_growth": round(rss[-1][1] / warm - 1, 4) if warm else None,
        "healthy_at_end": healthy,
        "log": str(gateway.log_path),
    })
    (out_dir / "chaos.json").write_text(json.dumps(result, indent=2))
    return result


def wait_healthy(gateway: Service, port: int) -> bool:
    try:
        wait_ready(gateway, port, "/healthz", timeout=10.0)
        return True
    except Exception:
        return False


def summary(r: dict[str, Any]) -> str:
    lines = [
        f"{r['requests']:,} requests in {r['duration_s']:.0f} s at {r['rate_per_s']:.0f}/s "
        f"(capacity {r['capacity_per_s'] or '-'}/s), {r['workers']} workers, "
        f"{sum(1 for e in r['events'] if e['event'] == 'reload')} reloads, "
        f"{sum(1 for e in r['events'] if e['event'] != 'reload')} workers stopped (SIG{r['kill_signal']})",
        f"without an answer: {r['without_answer']} "
        f"(stale keep-alive retries: {r['retried_stale_keepalive']})",
        f"call records: {r['records']:,}; missing {r['records_missing']}, unexpected "
        f"{r['records_unexpected']}, doubled {r['records_doubled']}",
        f"RSS: {r['rss_warm_kb'] / 1024:.1f} MB after warm-up -> {r['rss_end_kb'] / 1024:.1f} MB at the end "
        f"({(r['rss_growth'] or 0) * 100:+.1f}%)",
        f"latency p50 {r['latency_ms_p50'] or 0:.1f} ms, p99 {r['latency_ms_p99'] or 0:.1f} ms",
    ]
    for kind, statuses in r["statuses"].items():
        lines.append(f"  {kind}: " + ", ".join(f"{s}x{n}" for s, n in sorted(statuses.items())))
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load (default 1800)")
    p.add_argument("--load", type=float, default=0.5, help="share of the measured capacity (default 0.5)")
    p.add_argument("--rate", type=float, help="requests per second instead of --load")
    p.add_argument("--probe", type=float, default=10.0, help="seconds of the capacity probe (default 10)")
    p.add_argument("--probe-connections", type=int, default=32)
    p.add_argument("--reload-every", type=float, default=60.0)
    p.add_argument("--kill-every", type=float, default=300.0)
    p.add_argument("--kill-signal", choices=["TERM", "KILL"], default="TERM")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mock-workers", type=int, default=1)
    p.add_argument("--warmup", type=float, default=120.0, help="seconds before the RSS baseline")
    p.add_argument("--rss-every", type=float, default=10.0)
    p.add_argument("--out", help="directory for the config, logs and chaos.json (default: a temp dir)")
    args = p.parse_args(argv)
    if args.duration <= 0 or not 0 < args.load <= 1:
        p.error("--duration must be above 0 and --load in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    with terminate_as_exit():
        result = run(args)
    print(summary(result))
    ok = (result["without_answer"] == 0 and result["records_missing"] == 0
          and result["records_unexpected"] == 0 and result["records_doubled"] == 0
          and result["healthy_at_end"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
