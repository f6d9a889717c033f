"""What every benchmark needs from the machine: processes, their CPU time and memory, CPU pinning, tools.

Linux only (``/proc``, ``taskset``, ``prctl``). The servers under test are started in their own sessions
(so a whole process tree is stopped with one signal), with ``PR_SET_PDEATHSIG`` (so a harness killed with
SIGKILL leaves no server behind), and their CPU time and RSS are read from ``/proc`` for the whole tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CLK_TCK",
    "HOST",
    "REPO_ROOT",
    "BenchError",
    "ProcCpu",
    "Service",
    "available_cpus",
    "cgroup_cpu_quota",
    "children",
    "cpu_pressure_us",
    "cpu_spec",
    "die_with_parent",
    "find_tools",
    "free_ports",
    "gateway_compiled",
    "git_revision",
    "http_request",
    "log",
    "machine_busy_seconds",
    "machine_info",
    "parse_cpu_list",
    "process_tree",
    "raise_nofile_limit",
    "read_proc_cpu",
    "read_rss_kb",
    "start_service",
    "terminate_as_exit",
    "tool_version",
    "tree_cpu_seconds",
    "tree_rss_kb",
    "wait_ready",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
INSTALL_HINT = "apt-get install -y nginx wrk"


class BenchError(Exception):
    """A setup failure: missing tool, a process that did not start, a probe that failed."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- CPU time and memory from /proc -------------------------------------------------------------------------

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


def read_rss_kb(pid: int) -> int:
    """Resident set size of one process in KiB (``VmRSS`` of ``/proc/<pid>/status``); 0 for a kernel thread.

    FileNotFoundError / ProcessLookupError when the process is gone."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


_HAVE_CHILDREN_FILE = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
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
        stack.extend(children(pid))
    return seen


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of ``root``'s process tree: every live process's own time plus what
    each has collected from children it reaped, so a worker that exits does not take its time along."""
    total = 0.0
    for pid in process_tree(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += read_proc_cpu(pid).total
    return total


def tree_rss_kb(root: int) -> int:
    """Sum of the RSS of ``root``'s process tree in KiB (pages shared after fork count once per process)."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += read_rss_kb(pid)
    return total


def machine_busy_seconds() -> float:
    """CPU-seconds every CPU of the machine has been busy (``/proc/stat``): compared with the CPU time of
    the benchmark's own processes, it shows how much else ran on the machine during a measurement."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    vals = [int(x) for x in fields]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    guest = sum(vals[8:10]) if len(vals) > 9 else 0  # already counted in user / nice
    return (sum(vals) - idle - guest) / CLK_TCK


def cpu_pressure_us() -> int | None:
    """Microseconds during which some runnable task waited for a CPU, since boot (``/proc/pressure/cpu``,
    Linux PSI); None when the kernel does not provide it. Over a measurement, its growth divided by the
    wall time is the share of time something was kept waiting: the benchmark's own processes on a
    saturated load CPU, or other work on a shared machine."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


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


def cpu_spec(cpus: Sequence[int]) -> str:
    return ",".join(map(str, cpus))


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of cgroup v2 quota (cpu.max), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def raise_nofile_limit(want: int | None = None) -> int:
    """Raise this process's soft RLIMIT_NOFILE to ``want`` (default: the hard limit); the new soft limit.

    Children inherit it, so call it before starting servers that must hold thousands of connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want is None:
        target = hard
    else:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target == resource.RLIM_INFINITY:
        target = max(soft, 1 << 20)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- processes ----------------------------------------------------------------------------------------------


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
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

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} died ({self.proc.returncode}); its log:\n{self.log_tail()}")

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


def start_service(name: str, argv: list[str], tmp: Path, *, env: Mapping[str, str] | None = None) -> Service:
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            env=dict(env) if env is not None else None, start_new_session=True, preexec_fn=die_with_parent,
        )
    return Service(name, proc, log_path)


def http_request(port: int, method: str, path: str, body: bytes | None = None, *, key: str | None = None,
                 timeout: float = 5.0, extra: Sequence[tuple[str, str]] = ()) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)  # no proxy from the environment
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        headers.update(extra)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(svc: Service, port: int, path: str, *, key: str | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise BenchError(f"{svc.name} exited with {svc.proc.returncode} before it was ready; its log:\n"
                             f"{svc.log_tail()}")
        try:
            status, _ = http_request(port, "GET", path, key=key, timeout=1.0)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{svc.name} not ready on http://{HOST}:{port}{path} after {timeout:.0f} s ({last}); "
                     f"its log:\n{svc.log_tail()}")


def free_ports(n: int) -> list[int]:
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


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM / SIGHUP raise SystemExit so the ``finally`` clauses stop the services and remove temp dirs."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- tools and the machine ----------------------------------------------------------------------------------


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def find_tools(names: Sequence[str] = ("nginx", "wrk", "taskset")) -> dict[str, Any]:
    """Paths of the tools (and nginx's and wrk's versions); BenchError naming the missing ones."""
    tools: dict[str, Any] = {}
    missing = []
    for name in names:
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
    if "nginx" in tools:
        tools["nginx_version"] = tool_version([tools["nginx"], "-v"])
        try:
            help_text = subprocess.run([tools["nginx"], "-h"], capture_output=True, text=True, timeout=10)
            tools["nginx_has_e"] = "-e filename" in help_text.stdout + help_text.stderr
        except (OSError, subprocess.TimeoutExpired):
            tools["nginx_has_e"] = False
    if "wrk" in tools:
        tools["wrk_version"] = tool_version([tools["wrk"], "--version"])
    return tools


def git_revision() -> dict[str, Any] | None:
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


def gateway_compiled() -> dict[str, bool] | None:
    code = "import json; from gateway._core import compiled; print(json.dumps(compiled()))"
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=30)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def machine_info(tools: Mapping[str, Any]) -> dict[str, Any]:
    """What the figures came from: CPUs, memory, OS, Python, tool versions, the compiled core, the commit."""
    compiled = gateway_compiled()
    if compiled is not None and not all(compiled.values()):
        log(f"WARNING: the gateway ran (partly) without its compiled core {compiled}: "
            "build it (pip install -e .) before reading the figures")
    try:
        load: tuple[float, float, float] | None = os.getloadavg()
    except OSError:
        load = None
    pressure = None
    with contextlib.suppress(OSError):
        pressure = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    return {"cpu_model": _cpu_model(), "cpus_available": len(available_cpus()), "cpu_count": os.cpu_count(),
            "cgroup_cpu_quota": cgroup_cpu_quota(), "mem_total_mb": _mem_total_mb(),
            "platform": platform.platform(), "python": platform.python_version(),
            "nginx": tools.get("nginx_version"), "wrk": tools.get("wrk_version"),
            "loadavg_at_start": load, "cpu_pressure_at_start": pressure, "gateway_compiled_core": compiled,
            "git": git_revision()}
