"""The processes of one measurement: the mock upstream, the gateway and nginx, each pinned and on loopback.

```
        load CPUs                                 server CPUs
   wrk / load generator  ──HTTP/1.1──▶  gateway serve --workers N  ──┐
                         ──HTTP/1.1──▶  nginx, worker_processes N  ──┤ keep-alive
   gateway mock (the upstream)  ◀────────────────────────────────────┘
```

A ``Stack`` starts them (each in its own session, pinned with ``taskset``, on a free port), waits until
each answers, and stops them all in ``stop``. ``wrk_round`` is one closed-loop measurement of one target:
wrk's report plus the CPU time of the server's whole process tree and of the load side during it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.configs import (
    BENCH_KEY,
    GATEWAY_KEY,
    gateway_key_digest,
    gateway_toml,
    limited_key_digest,
    nginx_conf,
    static_upstream_conf,
)
from bench.procs import (
    HOST,
    BenchError,
    Service,
    children,
    cpu_pressure_us,
    cpu_spec,
    free_ports,
    http_request,
    machine_busy_seconds,
    read_rss_kb,
    start_service,
    tree_cpu_seconds,
    wait_ready,
)
from bench.wrk import WrkResult, parse_wrk_output, run_wrk

__all__ = ["Round", "Stack", "StackOptions", "Target", "wrk_round"]


@dataclass
class StackOptions:
    server_cpus: list[int]
    load_cpus: list[int]
    gateway_workers: int = 1
    nginx_workers: int = 1
    mock_workers: int = 1
    #: require API keys on the gateway (the access phase runs on every request)
    auth: bool = False
    #: with ``auth``: also the key limited to one request a day (``configs.LIMITED_KEY``), which turns
    #: the gateway's admit phase on
    rate_limited_key: bool = False
    #: the gateway's upstream pool size per worker (None: its default)
    pool_size: int | None = None
    #: nginx's worker_connections
    nginx_connections: int = 4096
    with_gateway: bool = True
    with_nginx: bool = True
    #: a chat request body: when set, the targets proxy to a static nginx (on the load CPUs) that answers
    #: every chat completion with what the mock answered to this body (a cheaper upstream; see
    #: ``configs.static_upstream_conf``); the mock still runs, idle
    static_upstream: bytes | None = None
    generator: str = "bench"
    #: the gateway's call records (to its stderr, the service's log file); off in every scenario but
    #: ``bench.records``
    call_records: bool = False
    #: TOML appended to the gateway's config (e.g. a ``[records]`` table)
    gateway_toml: str = ""
    #: the mock's wire format (``gateway mock --dialect``); ``anthropic`` also makes the gateway's provider
    #: an Anthropic one (``configs.gateway_toml``'s ``provider_type``)
    upstream_dialect: str = "openai"


@dataclass
class Target:
    name: str
    port: int
    service: Service
    #: the key clients send (the gateway's static key when it requires keys)
    key: str = BENCH_KEY

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the children of the supervisor / nginx master."""
        return sorted(children(self.service.pid)) or [self.service.pid]

    def worker_rss_kb(self) -> int:
        return sum(read_rss_kb(p) for p in self.worker_pids())


@dataclass
class Round:
    target: str
    index: int
    wall_s: float
    server_cpu_s: float
    load_cpu_s: float
    wrk: WrkResult
    wrk_output: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def req_per_cpu_s(self) -> float:
        return self.wrk.requests / self.server_cpu_s if self.server_cpu_s > 0 else 0.0

    def as_dict(self, n_load_cpus: int) -> dict[str, Any]:
        return {
            "target": self.target, "round": self.index, "wall_s": round(self.wall_s, 3),
            "rps": self.wrk.rps, "requests": self.wrk.requests,
            "server_cpu_s": round(self.server_cpu_s, 3), "req_per_cpu_s": round(self.req_per_cpu_s, 1),
            "server_cpu_util": round(self.server_cpu_s / self.wall_s, 3) if self.wall_s else None,
            "load_cpu_util": round(self.load_cpu_s / (self.wall_s * n_load_cpus), 3) if self.wall_s else None,
            "wrk": asdict(self.wrk) | {"errors": self.wrk.errors},
            "wrk_output": self.wrk_output,
            **self.extra,
        }


class Stack:
    def __init__(self, tools: dict[str, Any], tmp: Path, opts: StackOptions) -> None:
        self.tools = tools
        self.tmp = tmp
        self.opts = opts
        self.services: list[Service] = []
        self.server_cpus = cpu_spec(opts.server_cpus)
        self.load_cpus = cpu_spec(opts.load_cpus)
        self.mock: Service | None = None
        self.mock_port = 0
        #: what the targets proxy to: the mock, or the static upstream
        self.upstream: Service | None = None
        self.upstream_port = 0
        self.targets: dict[str, Target] = {}

    def pinned(self, cpus: str, argv: list[str]) -> list[str]:
        return [self.tools["taskset"], "-c", cpus, *argv]  # taskset execs: the pid is the program's

    def _add(self, svc: Service) -> Service:
        self.services.append(svc)
        return svc

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.services.clear()

    def check_alive(self) -> None:
        for svc in self.services:
            svc.check_alive()

    def start(self) -> None:
        o = self.opts
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        mock_port, gw_port, nginx_port, static_port = free_ports(4)
        self.mock_port = mock_port
        self.mock = self._add(start_service("mock", self.pinned(self.load_cpus, [
            sys.executable, "-m", "gateway", "mock", "--host", HOST, "--port", str(mock_port), "-q",
            "--workers", str(o.mock_workers), "--dialect", o.upstream_dialect,
        ]), self.tmp))
        wait_ready(self.mock, mock_port, "/healthz")
        self.upstream, self.upstream_port = self.mock, mock_port
        if o.static_upstream is not None:
            status, answer = http_request(mock_port, "POST", "/v1/chat/completions", o.static_upstream,
                                          key=BENCH_KEY)
            if status != 200:
                raise BenchError(f"the mock answered {status} to the static upstream's request: "
                                 f"{answer[:500]!r}")
            conf = self.tmp / "upstream.conf"
            conf.write_text(static_upstream_conf(self.tmp, static_port, answer, generator=o.generator))
            argv = [self.tools["nginx"], "-p", f"{self.tmp}/", "-c", str(conf)]
            if self.tools.get("nginx_has_e"):
                argv += ["-e", str(self.tmp / "upstream-error.log")]
            self.upstream = self._add(start_service("upstream", self.pinned(self.load_cpus, argv), self.tmp))
            wait_ready(self.upstream, static_port, "/healthz")
            self.upstream_port = static_port
        mock_port = self.upstream_port  # what the targets proxy to

        if o.with_gateway:
            gw_config = self.tmp / "gateway.toml"
            key = BENCH_KEY
            if o.auth:
                store = self.tmp / "gateway-store" / "keys.db"
                store.parent.mkdir(exist_ok=True)
                limited = limited_key_digest() if o.rate_limited_key else None
                gw_config.write_text(gateway_toml(gw_port, mock_port, workers=o.gateway_workers,
                                                  auth_digest=gateway_key_digest(), store_path=store,
                                                  pool_size=o.pool_size, limited_digest=limited,
                                                  generator=o.generator, call_records=o.call_records,
                                                  provider_type=o.upstream_dialect))
                key = GATEWAY_KEY
            else:
                gw_config.write_text(gateway_toml(gw_port, mock_port, workers=o.gateway_workers,
                                                  pool_size=o.pool_size, generator=o.generator,
                                                  call_records=o.call_records,
                                                  provider_type=o.upstream_dialect))
            if o.gateway_toml:
                gw_config.write_text(gw_config.read_text() + "\n" + o.gateway_toml + "\n")
            gateway = self._add(start_service("gateway", self.pinned(self.server_cpus, [
                sys.executable, "-m", "gateway", "serve", "--config", str(gw_config),
                "--workers", str(o.gateway_workers), "--host", HOST, "--port", str(gw_port),
            ]), self.tmp, env={**os.environ, "BENCH_KEY": BENCH_KEY}))
            wait_ready(gateway, gw_port, "/readyz")
            self.targets["gateway"] = Target("gateway", gw_port, gateway, key)
            self._wait_workers(self.targets["gateway"], o.gateway_workers)

        if o.with_nginx:
            conf = self.tmp / "nginx.conf"
            nofile = 2 * o.nginx_connections + 1024 if o.nginx_connections > 4096 else None
            conf.write_text(nginx_conf(self.tmp, nginx_port, mock_port, workers=o.nginx_workers,
                                       worker_connections=o.nginx_connections, rlimit_nofile=nofile,
                                       generator=o.generator))
            argv = [self.tools["nginx"], "-p", f"{self.tmp}/", "-c", str(conf)]
            if self.tools.get("nginx_has_e"):  # nginx >= 1.19.5: no attempt at the default error log
                argv += ["-e", str(self.tmp / "nginx-error.log")]
            nginx = self._add(start_service("nginx", self.pinned(self.server_cpus, argv), self.tmp))
            try:
                wait_ready(nginx, nginx_port, "/v1/models")
            except BenchError as exc:
                err = self.tmp / "nginx-error.log"
                tail = err.read_text(errors="replace")[-2000:] if err.exists() else ""
                raise BenchError(f"{exc}\nnginx error log:\n{tail}") from None
            self.targets["nginx"] = Target("nginx", nginx_port, nginx, BENCH_KEY)
            self._wait_workers(self.targets["nginx"], o.nginx_workers)

    def _wait_workers(self, target: Target, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(children(target.service.pid)) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def nginx_error_tail(self) -> str:
        err = self.tmp / "nginx-error.log"
        return err.read_text(errors="replace")[-2000:] if err.exists() else ""


def wrk_round(stack: Stack, target: Target, url_path: str, lua: Path, index: int, *, duration: float,
              connections: int, threads: int, timeout: float) -> Round:
    """One closed-loop wrk run against ``target`` with the CPU time of the server tree and the load side."""
    upstream = stack.upstream
    assert upstream is not None
    cpu0 = tree_cpu_seconds(target.service.pid)
    mock0 = tree_cpu_seconds(upstream.pid)
    busy0, psi0 = machine_busy_seconds(), cpu_pressure_us()
    t0 = time.monotonic()
    text, wrk_cpu = run_wrk(stack.tools["wrk"], stack.tools["taskset"], stack.load_cpus, url_path,
                            target.port, lua, duration=duration, connections=connections, threads=threads,
                            timeout=timeout)
    wall = time.monotonic() - t0
    cpu1 = tree_cpu_seconds(target.service.pid)
    mock1 = tree_cpu_seconds(upstream.pid)
    busy, psi1 = machine_busy_seconds() - busy0, cpu_pressure_us()
    for svc in (target.service, upstream):
        if svc.proc.poll() is not None:
            raise BenchError(f"{svc.name} died during the round ({svc.proc.returncode}); its log:\n"
                             f"{svc.log_tail()}")
    server, load = cpu1 - cpu0, (mock1 - mock0) + wrk_cpu
    # what else kept the machine busy meanwhile: other work on a shared machine, and kernel work that is
    # charged to no process
    other = max(0.0, busy - server - load) / wall
    waiting = (psi1 - psi0) / 1e6 / wall if psi0 is not None and psi1 is not None else None
    return Round(target.name, index, wall, server, load, parse_wrk_output(text), text,
                 {"other_cpu_util": round(other, 3), "cpu_wait_share": waiting,
                  "upstream_cpu_s": round(mock1 - mock0, 3)})
