"""The gateway (one worker) against nginx ``proxy_pass``, both in front of the same mock upstream.

    python -m bench.proxy_vs_nginx [--scenario chat|stream] [--rounds 3] [--duration 6] [--json PATH]

One run starts the mock upstream (``gateway mock``), the gateway (``gateway serve --workers 1``, a generated
TOML) and nginx (a generated config, one worker), all on loopback, then loads each with ``wrk`` sending
the *same bytes*: warm-up, then rounds alternating the targets (ABBA order, so a slow drift of the
machine does not favour one side). For every round it records wrk's figures and the CPU time the server
under test spent (``/proc/<pid>/stat`` of its whole process tree), and at the end prints a table with the
median requests/s, the median requests per server-CPU-second and the gateway/nginx ratios of both.

Why requests per CPU-second: on a 2-core machine the server under test gets one core, and wrk and the
mock share the other. Raw requests/s can then be capped by the load side (the mock is Python too), so
it understates a fast server and says little about the other one. Requests per CPU-second divide the
work done by the CPU the server actually burnt: what one core of that server delivers, independent of
whether it was saturated. ``bench/README.md`` has the details and the caveats.

The test ``tests/unit/test_bench_harness.py`` runs ``--quick`` (one 1-second round, no warm-up) and checks
the harness, never the figures. Linux only (``/proc``, ``taskset``). Needs ``nginx`` and ``wrk``
(``apt-get install -y nginx wrk``).

Extending: a scenario is a ``Scenario`` in ``SCENARIOS`` (path, body bytes, a response check); a target
is anything ``Target`` describes (a name, a port, the root pid of its process tree), so further
reference proxies are one more start function and one more entry in the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SCENARIOS",
    "BenchError",
    "ProcCpu",
    "Scenario",
    "WrkResult",
    "main",
    "parse_cpu_list",
    "parse_wrk_output",
    "process_tree",
    "read_proc_cpu",
    "tree_cpu_seconds",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
#: the upstream model id; the gateway's model has the same name (see ``gateway_toml``)
MODEL = "mock-1"
BENCH_KEY = "bench-key"
INSTALL_HINT = "apt-get install -y nginx wrk"


class BenchError(Exception):
    """A setup failure: missing tool, a process that did not start, a probe that failed."""


# --- scenarios ----------------------------------------------------------------------------------------------


def _chat_body(content: str, **extra: Any) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def _check_chat(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"status {status}"
    try:
        doc = json.loads(body)
        doc["choices"][0]["message"]["content"]  # a shape check: raises when it is not a completion
    except (ValueError, KeyError, IndexError, TypeError):
        return "not a chat completion"
    return None


def _check_stream(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"status {status}"
    events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    if not events or events[-1] != b"data: [DONE]":
        return "stream does not end with data: [DONE]"
    if len(events) < STREAM_CHUNKS + 1:
        return f"only {len(events)} stream events, expected at least {STREAM_CHUNKS + 1}"
    return None


STREAM_CHUNKS = 20


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str
    body: bytes
    #: (status, whole response body) -> None when the response is what the scenario expects, else why not
    check: Callable[[int, bytes], str | None]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "chat", "small non-stream chat completion", "/v1/chat/completions",
            _chat_body("Say hello to the benchmark."), _check_chat,
        ),
        # ``stream_options.include_usage`` is set by the client so the gateway forwards the bytes untouched
        # (without it the gateway adds it to meter usage, and the mock would see different bytes from
        # the two targets); ``max_tokens``: the mock splits the completion's words into at most
        # ``chunks`` pieces, so it needs at least that many words
        Scenario(
            "stream", f"streamed chat completion, {STREAM_CHUNKS} content chunks", "/v1/chat/completions",
            _chat_body(f"!mock chunks={STREAM_CHUNKS} Tell the benchmark a story.", stream=True,
                       stream_options={"include_usage": True}, max_tokens=2 * STREAM_CHUNKS),
            _check_stream,
        ),
    )
}


# --- wrk output ---------------------------------------------------------------------------------------------

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME_RE = r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    latency_avg_ms: float | None = None
    #: percentile (50, 75, 90, 99) -> milliseconds; empty without ``--latency``
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    #: status >= 400 (wrk's "Non-2xx or 3xx responses" line counts those)
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("connect", "read", "write", "timeout"), 0))

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def parse_wrk_output(text: str) -> WrkResult:
    """wrk's human-readable report (with or without ``--latency``) as numbers; ValueError when it is not one.

    wrk prints the "Socket errors" and "Non-2xx or 3xx responses" lines only when they are not zero, so
    their absence means zero. Times are converted to milliseconds.
    """
    m = re.search(r"^\s*([0-9]+) requests in " + _TIME_RE, text, re.M)
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if m is None or rps is None:
        raise ValueError("not a wrk report (no 'N requests in T' / 'Requests/sec:' lines):\n" + text[-2000:])
    result = WrkResult(requests=int(m.group(1)), duration_s=_ms(m.group(2), m.group(3)) / 1000.0,
                       rps=float(rps.group(1)))
    avg = re.search(r"^\s*Latency\s+" + _TIME_RE, text, re.M)
    if avg:
        result.latency_avg_ms = _ms(avg.group(1), avg.group(2))
    dist = text.find("Latency Distribution")
    if dist >= 0:
        for pm in re.finditer(r"^\s*([0-9.]+)%\s+" + _TIME_RE + r"\s*$", text[dist:], re.M):
            result.percentiles_ms[pm.group(1)] = _ms(pm.group(2), pm.group(3))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                                        map(int, sock.groups()), strict=True))
    non2 = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2:
        result.non_2xx = int(non2.group(1))
    return result


# --- CPU time from /proc ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcCpu:
    """CPU seconds of one process (all its threads) from ``/proc/<pid>/stat``."""

    ppid: int
    utime: float
    stime: float
    #: of its children it has waited for (a reaped worker's time moves here)
    cutime: float
    cstime: float

    @property
    def own(self) -> float:
        return self.utime + self.stime

    @property
    def total(self) -> float:
        return self.utime + self.stime + self.cutime + self.cstime


def read_proc_cpu(pid: int) -> ProcCpu:
    """FileNotFoundError / ProcessLookupError when the process is gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # the command name (field 2) is in parentheses and may contain spaces and ')': cut at the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17
    ticks = [int(x) for x in fields[11:15]]
    return ProcCpu(int(fields[1]), *(t / CLK_TCK for t in ticks))


_HAVE_CHILDREN_FILE = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children(pid: int) -> list[int]:
    if _HAVE_CHILDREN_FILE:  # CONFIG_PROC_CHILDREN: one file per thread
        kids: list[int] = []
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            return []
        for tid in tids:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids.extend(int(x) for x in f.read().split())
        return kids
    out = []  # no children file: scan every process's parent
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
                if read_proc_cpu(int(entry)).ppid == pid:
                    out.append(int(entry))
    return out


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now (root first)."""
    seen: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(_children(pid))
    return seen


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of ``root``'s process tree: every live process's own time plus what
    each has collected from children it reaped, so a worker that exits does not take its time along."""
    total = 0.0
    for pid in process_tree(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += read_proc_cpu(pid).total
    return total


# --- CPUs ---------------------------------------------------------------------------------------------------


def parse_cpu_list(spec: str) -> list[int]:
    """``"0"``, ``"1-3"``, ``"0,2-3"`` -> sorted CPU numbers (taskset -c syntax)."""
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad CPU list {spec!r}")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"bad CPU range {part!r} in {spec!r}")
        cpus.update(range(a, b + 1))
    if not cpus:
        raise ValueError(f"empty CPU list {spec!r}")
    return sorted(cpus)


def _cpu_spec(cpus: Sequence[int]) -> str:
    return ",".join(map(str, cpus))


def _available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of cgroup v2 quota (cpu.max), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


# --- processes ----------------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: SIGTERM this child when the harness dies, so a killed harness leaves nothing behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group (it is its own session), SIGKILL what is left after ``grace``."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # the leader may be gone while workers linger in the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)


def _start(name: str, argv: list[str], tmp: Path, *, env: dict[str, str] | None = None) -> Service:
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )
    return Service(name, proc, log_path)


def _request(port: int, method: str, path: str, body: bytes | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)  # no proxy from the environment
    try:
        headers = {"Authorization": f"Bearer {BENCH_KEY}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_ready(svc: Service, port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise BenchError(f"{svc.name} exited with {svc.proc.returncode} before it was ready; its log:\n"
                             f"{svc.log_tail()}")
        try:
            status, _ = _request(port, "GET", path, timeout=1.0)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{svc.name} not ready on http://{HOST}:{port}{path} after {timeout:.0f} s ({last}); "
                     f"its log:\n{svc.log_tail()}")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --- generated configs --------------------------------------------------------------------------------------


def gateway_toml(port: int, mock_port: int) -> str:
    # The gateway's model is named like the upstream model (``mock-1``), not e.g. ``bench-model``: then
    # the gateway forwards the client's bytes untouched (no model rewrite), and nginx, which rewrites
    # nothing, gets the very same request body, so both targets ask the mock for identical work.
    return f"""\
# generated by bench/proxy_vs_nginx.py
[server]
host = "{HOST}"
port = {port}
workers = 1
drain_timeout = 1.0

[log]
level = "warning"
call_records = false

[providers.upstream]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:BENCH_KEY"

# same name as upstream: nothing is rewritten, the body bytes equal what nginx forwards
[models.{MODEL}]
provider = "upstream"
upstream_model = "{MODEL}"
endpoints = ["chat", "completions"]
"""


def nginx_conf(tmp: Path, port: int, mock_port: int) -> str:
    return f"""\
# generated by bench/proxy_vs_nginx.py
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-client-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    # the gateway caps neither client nor upstream connections at N requests; nginx defaults to 1000
    keepalive_requests 1000000;

    upstream mock {{
        server {HOST}:{mock_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}

    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # relay streamed chunks as they arrive, as the gateway does
            proxy_buffering off;
        }}
    }}
}}
"""


def wrk_lua(body_path: Path) -> str:
    # no request()/response() functions: wrk then builds the request once and stays on its fast path
    return f"""\
-- generated by bench/proxy_vs_nginx.py
local f = assert(io.open("{body_path}", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {BENCH_KEY}"
"""


# --- the run ------------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    service: Service


@dataclass
class Round:
    target: str
    index: int
    wall_s: float
    server_cpu_s: float
    load_cpu_s: float
    wrk: WrkResult
    wrk_output: str

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
        }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _git_revision() -> dict[str, Any] | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode != 0:
        return None
    return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _gateway_compiled() -> dict[str, bool] | None:
    code = "import json; from gateway._core import compiled; print(json.dumps(compiled()))"
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=30)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, tools: dict[str, Any]) -> None:
        self.args = args
        self.tmp = tmp
        self.tools = tools
        self.scenario = SCENARIOS[args.scenario]
        self.services: list[Service] = []
        self.server_cpus = _cpu_spec(args.server_cpus)
        self.load_cpus = _cpu_spec(args.load_cpus)
        self.body_path = tmp / "body.json"
        self.lua_path = tmp / "body.lua"

    def _pinned(self, cpus: str, argv: list[str]) -> list[str]:
        return [self.tools["taskset"], "-c", cpus, *argv]  # taskset execs: the pid is the program's

    def _add(self, svc: Service) -> Service:
        self.services.append(svc)
        return svc

    def stop_all(self) -> None:
        for svc in reversed(self.services):
            svc.stop()

    def start(self) -> tuple[Service, list[Target]]:
        self.body_path.write_bytes(self.scenario.body)
        self.lua_path.write_text(wrk_lua(self.body_path))
        mock_port, gw_port, nginx_port = _free_ports(3)

        mock = self._add(_start("mock", self._pinned(self.load_cpus, [
            sys.executable, "-m", "gateway", "mock", "--host", HOST, "--port", str(mock_port), "-q",
            "--workers", str(self.args.mock_workers),
        ]), self.tmp))
        _wait_ready(mock, mock_port, "/healthz")

        gw_config = self.tmp / "gateway.toml"
        gw_config.write_text(gateway_toml(gw_port, mock_port))
        gateway = self._add(_start("gateway", self._pinned(self.server_cpus, [
            sys.executable, "-m", "gateway", "serve", "--config", str(gw_config), "--workers", "1",
            "--host", HOST, "--port", str(gw_port),
        ]), self.tmp, env={**os.environ, "BENCH_KEY": BENCH_KEY}))
        _wait_ready(gateway, gw_port, "/readyz")

        conf = self.tmp / "nginx.conf"
        conf.write_text(nginx_conf(self.tmp, nginx_port, mock_port))
        argv = [self.tools["nginx"], "-p", f"{self.tmp}/", "-c", str(conf)]
        if self.tools.get("nginx_has_e"):  # nginx >= 1.19.5: no attempt at the default error log
            argv += ["-e", str(self.tmp / "nginx-error.log")]
        nginx = self._add(_start("nginx", self._pinned(self.server_cpus, argv), self.tmp))
        try:
            _wait_ready(nginx, nginx_port, "/v1/models")
        except BenchError as exc:
            err = self.tmp / "nginx-error.log"
            tail = err.read_text(errors="replace")[-2000:] if err.exists() else ""
            raise BenchError(f"{exc}\nnginx error log:\n{tail}") from None

        targets = [Target("gateway", gw_port, gateway), Target("nginx", nginx_port, nginx)]
        for t in targets:  # one real request each: a broken path fails here, not as a table of errors
            status, body = _request(t.port, "POST", self.scenario.path, self.scenario.body, timeout=10.0)
            problem = self.scenario.check(status, body)
            if problem:
                raise BenchError(f"probe of {t.name} ({self.scenario.name}) failed: {problem}; response:\n"
                                 f"{body[:1000]!r}\n{t.service.name} log:\n{t.service.log_tail()}")
        return mock, targets

    def wrk(self, port: int, duration: int) -> tuple[str, float]:
        a = self.args
        argv = self._pinned(self.load_cpus, [
            self.tools["wrk"], f"-t{a.threads}", f"-c{a.connections}", f"-d{duration}s",
            f"--timeout={a.timeout}s", "--latency",
            "-s", str(self.lua_path), f"http://{HOST}:{port}{self.scenario.path}",
        ])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                             preexec_fn=_die_with_parent)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            raise BenchError(f"wrk exited with {out.returncode}:\n{out.stdout}\n{out.stderr}")
        wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return out.stdout, wrk_cpu

    def round(self, target: Target, mock: Service, index: int) -> Round:
        cpu0 = tree_cpu_seconds(target.service.pid)
        mock0 = tree_cpu_seconds(mock.pid)
        t0 = time.monotonic()
        text, wrk_cpu = self.wrk(target.port, self.args.duration)
        wall = time.monotonic() - t0
        cpu1 = tree_cpu_seconds(target.service.pid)
        mock1 = tree_cpu_seconds(mock.pid)
        for svc in (target.service, mock):
            if svc.proc.poll() is not None:
                raise BenchError(f"{svc.name} died during the round ({svc.proc.returncode}); its log:\n"
                                 f"{svc.log_tail()}")
        return Round(target.name, index, wall, cpu1 - cpu0, (mock1 - mock0) + wrk_cpu,
                     parse_wrk_output(text), text)

    def run(self) -> dict[str, Any]:
        a = self.args
        mock, targets = self.start()
        if a.warmup > 0:
            for t in targets:
                _log(f"warm-up {t.name} ({a.warmup} s)")
                self.wrk(t.port, a.warmup)
        rounds: list[Round] = []
        for i in range(a.rounds):
            order = targets if i % 2 == 0 else targets[::-1]  # ABBA: drift hits both sides alike
            for t in order:
                r = self.round(t, mock, i + 1)
                rounds.append(r)
                _log(f"round {i + 1}/{a.rounds} {t.name:<8} {r.wrk.rps:>10,.0f} req/s "
                     f"{r.req_per_cpu_s:>10,.0f} req/CPU-s  server CPU {r.server_cpu_s / r.wall_s:4.0%}  "
                     f"p99 {_fmt_ms(r.wrk.percentiles_ms.get('99'))}  errors {r.wrk.errors}")
        result = self.summarise([t.name for t in targets], rounds)
        result["machine"] = self.machine()
        return result

    def machine(self) -> dict[str, Any]:
        compiled = _gateway_compiled()
        if compiled is not None and not all(compiled.values()):
            _log(f"WARNING: the gateway ran (partly) without its compiled core {compiled}: "
                 "build it (pip install -e .) before reading the figures")
        return {"cpus_available": len(_available_cpus()), "cpu_count": os.cpu_count(),
                "platform": platform.platform(), "python": platform.python_version(),
                "nginx": self.tools.get("nginx_version"), "wrk": self.tools.get("wrk_version"),
                "gateway_compiled_core": compiled, "git": _git_revision()}

    def summarise(self, targets: Sequence[str], rounds: list[Round]) -> dict[str, Any]:
        """The medians, errors and ratios of the rounds (a pure function of them and the settings)."""
        a = self.args
        n_load = len(a.load_cpus)
        out: dict[str, Any] = {}
        for name in targets:
            rs = [r for r in rounds if r.target == name]
            errors = {"non_2xx": sum(r.wrk.non_2xx for r in rs)}
            for k in ("connect", "read", "write", "timeout"):
                errors[k] = sum(r.wrk.socket_errors[k] for r in rs)
            p = [r.wrk.percentiles_ms for r in rs]
            out[name] = {
                "median_rps": statistics.median(r.wrk.rps for r in rs),
                "median_req_per_cpu_s": statistics.median(r.req_per_cpu_s for r in rs),
                "median_server_cpu_util": statistics.median(r.server_cpu_s / r.wall_s for r in rs),
                "median_load_cpu_util": statistics.median(r.load_cpu_s / (r.wall_s * n_load) for r in rs),
                "p50_ms": _median_or_none([x.get("50") for x in p]),
                "p99_ms": _median_or_none([x.get("99") for x in p]),
                "errors": errors,
                "error_total": sum(errors.values()),
                "rounds": [r.as_dict(n_load) for r in rs],
            }
        g, n = out["gateway"], out["nginx"]
        return {
            "scenario": {"name": self.scenario.name, "description": self.scenario.description,
                         "path": self.scenario.path, "body": self.scenario.body.decode()},
            "settings": {
                "rounds": a.rounds, "duration_s": a.duration, "warmup_s": a.warmup,
                "connections": a.connections, "threads": a.threads, "wrk_timeout_s": a.timeout,
                "mock_workers": a.mock_workers,
                "server_cpus": self.server_cpus, "load_cpus": self.load_cpus, "quick": a.quick,
            },
            "targets": out,
            "ratios": {"gateway_over_nginx": {
                "rps": _ratio(g["median_rps"], n["median_rps"]),
                "req_per_cpu_s": _ratio(g["median_req_per_cpu_s"], n["median_req_per_cpu_s"]),
            }},
            "ok": g["error_total"] == 0 and n["error_total"] == 0,
        }


def _median_or_none(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} us" if v < 1 else f"{v:.2f} ms"


def _fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def format_table(result: dict[str, Any]) -> str:
    s, sc = result["settings"], result["scenario"]
    lines = [
        f"scenario {sc['name']}: {sc['description']} (POST {sc['path']}); "
        f"{s['rounds']} round(s) x {s['duration_s']} s per target, "
        f"wrk -t{s['threads']} -c{s['connections']}; "
        f"server on CPU {s['server_cpus']}, wrk + mock on CPU {s['load_cpus']}",
        "",
        f"{'target':<9}{'req/s':>11}{'req/CPU-s':>12}{'srv CPU':>9}{'load CPU':>10}"
        f"{'p50':>11}{'p99':>11}{'errors':>8}",
    ]
    for name, t in result["targets"].items():
        lines.append(
            f"{name:<9}{t['median_rps']:>11,.0f}{t['median_req_per_cpu_s']:>12,.0f}"
            f"{t['median_server_cpu_util']:>9.0%}{t['median_load_cpu_util']:>10.0%}"
            f"{_fmt_ms(t['p50_ms']):>11}{_fmt_ms(t['p99_ms']):>11}{t['error_total']:>8}"
        )
    r = result["ratios"]["gateway_over_nginx"]
    lines += [
        "",
        f"gateway/nginx: req/s {_fmt_ratio(r['rps'])}   req/CPU-s {_fmt_ratio(r['req_per_cpu_s'])}",
        "",
        "Medians over the rounds. srv CPU = CPU time of the server's process tree / wall time (100% = one",
        "core busy); load CPU = CPU time of wrk + mock / (wall time x load CPUs). req/CPU-s = requests /",
        "server CPU-seconds: what one core of the server delivers. It is the per-core figure because wrk and",
        "the mock share the other core(s): when they saturate it they, not the server, cap req/s (a server",
        "below 100% srv CPU was waiting for them). Compare servers by req/CPU-s; req/s is what this box did.",
    ]
    if not result["ok"]:
        lines += ["", "ERRORS: a target answered non-2xx or had socket errors; these are not results."]
    return "\n".join(lines)


# --- CLI ----------------------------------------------------------------------------------------------------


def _find_tools() -> dict[str, Any]:
    tools: dict[str, Any] = {}
    missing = []
    for name in ("nginx", "wrk", "taskset"):
        path = shutil.which(name)
        if path is None and os.access(f"/usr/sbin/{name}", os.X_OK):  # sbin is not on every user's PATH
            path = f"/usr/sbin/{name}"
        if path is None:
            missing.append(name)
        else:
            tools[name] = path
    if missing:
        hints = []
        if set(missing) & {"nginx", "wrk"}:
            hints.append(f"`{INSTALL_HINT}`")
        if "taskset" in missing:
            hints.append("`apt-get install -y util-linux` (taskset)")
        raise BenchError(f"missing {', '.join(missing)}: install with {' and '.join(hints)}")
    tools["nginx_version"] = _version([tools["nginx"], "-v"])
    tools["wrk_version"] = _version([tools["wrk"], "--version"])
    try:
        help_text = subprocess.run([tools["nginx"], "-h"], capture_output=True, text=True, timeout=10)
        tools["nginx_has_e"] = "-e filename" in help_text.stdout + help_text.stderr
    except (OSError, subprocess.TimeoutExpired):
        tools["nginx_has_e"] = False
    return tools


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.proxy_vs_nginx",
        description="The gateway (1 worker) against nginx proxy_pass (1 worker) in front of the same mock "
                    "upstream. See bench/README.md.",
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="chat")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per target (default 3)")
    p.add_argument("--duration", type=int, default=6, help="seconds per round (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target (default 2; 0 = none)")
    p.add_argument("--connections", "-c", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--threads", "-t", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--timeout", type=int, default=2,
                   help="wrk's request timeout, seconds; slower answers count as timeout errors (default 2)")
    p.add_argument("--mock-workers", type=int, default=1, help="mock upstream processes (default 1)")
    p.add_argument("--server-cpus", default="0", help="CPUs of the server under test (taskset -c; default 0)")
    p.add_argument("--load-cpus", default="1", help="CPUs of wrk and the mock (taskset -c; default 1)")
    p.add_argument("--json", metavar="PATH", help="write the raw results as JSON")
    p.add_argument("--quick", action="store_true", help="harness check: 1 round of 1 s, no warm-up")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1, 0
    for name in ("rounds", "duration", "connections", "threads", "timeout", "mock_workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    if args.connections < args.threads:
        p.error("--connections must be at least --threads (wrk)")
    try:
        args.server_cpus = parse_cpu_list(args.server_cpus)
        args.load_cpus = parse_cpu_list(args.load_cpus)
    except ValueError as exc:
        p.error(str(exc))
    return args


def _check_cpus(args: argparse.Namespace) -> None:
    available = _available_cpus()
    if len(available) == 1:
        _log(f"WARNING: only 1 CPU available ({available[0]}): server, wrk and mock share it, so the figures "
             "mostly measure contention; pinning everything to it")
        args.server_cpus = args.load_cpus = available
        return
    for opt, cpus in (("--server-cpus", args.server_cpus), ("--load-cpus", args.load_cpus)):
        bad = sorted(set(cpus) - set(available))
        if bad:
            raise BenchError(f"{opt}: CPU(s) {_cpu_spec(bad)} not available (this process may use "
                             f"{_cpu_spec(available)})")
    if set(args.server_cpus) & set(args.load_cpus):
        _log("WARNING: --server-cpus and --load-cpus overlap: the server competes with wrk and the mock")
    quota = _cgroup_cpu_quota()
    if quota is not None and quota < len(available):
        _log(f"WARNING: the cgroup CPU quota is {quota:g} CPUs for {len(available)} visible CPUs: throttling "
             "can distort the figures")


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM / SIGHUP raise SystemExit so the ``finally`` clauses stop the services and remove temp dirs."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    with _terminate_as_exit():
        try:
            tools = _find_tools()
            _check_cpus(args)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        # keep the harness itself off the server's CPUs (it mostly sleeps, but /proc reads and probes run)
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, args.load_cpus)
        tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-vs-nginx-"))
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        bench = Bench(args, tmp, tools)
        try:
            result = bench.run()
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        except subprocess.TimeoutExpired as exc:
            print(f"bench: timed out: {exc}", file=sys.stderr)
            return 2
        finally:
            bench.stop_all()
            if args.keep_tmp:
                _log(f"temp dir kept: {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
