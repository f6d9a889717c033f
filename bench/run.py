"""The benchmark suite in one command: every scenario, the gateway against nginx, a report with plots.

    python -m bench.run                          # everything, full length (about a quarter of an hour)
    python -m bench.run --quick                  # a harness check: about a second per measurement
    python -m bench.run --scenarios chat,latency --out bench/results/chat-only

Writes ``bench/results/<YYYY-MM-DD-HHMMSS>/`` (or ``--out``): ``report.md`` (the bar with pass/fail,
then a table per scenario, ratios first), ``results.json`` (everything: every round, wrk's raw output,
the latency histograms, the machine, the git revision) and PNG plots. A progress line on stderr says
what is running. ``bench/README.md`` describes the scenarios and how each is measured;
``docs/performance.md`` holds the latest figures.

Exit status: 0 when every selected scenario ran (whatever the bar says), 1 when one failed or a target
had errors, 2 on a setup failure (a missing tool, a bad option).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import (
    REPO_ROOT,
    BenchError,
    available_cpus,
    cgroup_cpu_quota,
    cpu_spec,
    find_tools,
    log,
    machine_info,
    parse_cpu_list,
    raise_nofile_limit,
    terminate_as_exit,
)
from bench.report import evaluate_bar, make_plots, render_markdown
from bench.suite import SCENARIOS, Suite, default_settings

__all__ = ["main"]

#: scenario numbers of the issue, accepted by --scenarios as well as the names
_ALIASES = {"1": ["chat", "latency"], "2": ["prompts"], "3": ["stream"], "4": ["local"],
            "5": ["open-streams"], "6": ["scaling"], "7": ["soak"], "8": ["limits"]}


class Progress:
    """One line on stderr, rewritten in place on a terminal (a line per step otherwise)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.width = shutil.get_terminal_size((120, 20)).columns

    def scenario(self, index: int) -> None:
        self.index = index

    def __call__(self, text: str) -> None:
        el = int(time.monotonic() - self.t0)
        line = f"[{el // 60:02d}:{el % 60:02d}] [{self.index}/{self.total}] {text}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line[: self.width - 1])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self, text: str) -> None:
        self(text)
        if self.tty:
            sys.stderr.write("\n")


def parse_scenarios(spec: str | None) -> list[str]:
    """``"chat,5,soak"`` -> scenario names in the suite's order; ValueError naming an unknown one."""
    if not spec:
        return list(SCENARIOS)
    wanted: set[str] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if part in _ALIASES:
            wanted.update(_ALIASES[part])
        elif part in SCENARIOS:
            wanted.add(part)
        else:
            raise ValueError(f"unknown scenario {part!r}; known: {', '.join(SCENARIOS)} (or 1-8)")
    return [name for name in SCENARIOS if name in wanted]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run",
                                description="The benchmark suite: every scenario, the gateway against nginx, "
                                            "a report with plots. See bench/README.md.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="scenarios: " + "; ".join(f"{n} ({s.number}. {s.title})"
                                                                 for n, s in SCENARIOS.items()))
    p.add_argument("--scenarios", help="comma-separated names or numbers (default: all)")
    p.add_argument("--quick", action="store_true", help="harness check: ~1 s per measurement, small counts")
    p.add_argument("--out", metavar="DIR", help="output directory (default bench/results/<date-time>)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    g = p.add_argument_group("pinning")
    g.add_argument("--server-cpus", help="CPUs of the servers under test (taskset -c; default: the first)")
    g.add_argument("--load-cpus", help="CPUs of wrk, the load generator and the mock (default: the others)")
    g = p.add_argument_group("throughput (wrk)")
    g.add_argument("--rounds", type=int, help="measured rounds per target (default 3; quick 1)")
    g.add_argument("--duration", type=float, help="seconds per round (default 5; quick 1)")
    g.add_argument("--warmup", type=float, help="warm-up seconds per target and case (default 2; quick 0)")
    g.add_argument("--connections", "-c", type=int, help="wrk connections (default 64)")
    g.add_argument("--threads", "-t", type=int, help="wrk threads (default 1)")
    g.add_argument("--timeout", type=float, help="wrk's request timeout in seconds (default 10)")
    g.add_argument("--mock-workers", type=int, help="mock upstream processes (default 1)")
    g.add_argument("--no-auth", action="store_true",
                   help="the gateway without API keys (not the bar's setup)")
    g = p.add_argument_group("latency (open loop)")
    g.add_argument("--latency-loads", help="fractions of saturation (default 0.5,0.8)")
    g.add_argument("--latency-duration", type=float, help="measured seconds per point (default 10; quick 1)")
    g.add_argument("--latency-upstream", choices=("static", "mock"),
                   help="what the targets proxy to in the open-loop runs (default static; bench/README.md)")
    g.add_argument("--loadgen-procs", type=int, help="generator processes (default 1)")
    g.add_argument("--loadgen-connections", type=int, help="generator connections (default 64)")
    g = p.add_argument_group("open streams, soak")
    g.add_argument("--streams", type=int, help="streams to hold open (default 5000; quick 200)")
    g.add_argument("--soak-requests", type=int, help="requests of the soak (default 1,000,000; quick 20,000)")
    g = p.add_argument_group("limits (shared-state calls per request, in process)")
    g.add_argument("--limits-rpm", type=int, help="the policy's requests per minute (default 10,000)")
    g.add_argument("--limits-workers", help="deployment sizes, one worker of each measured (default 1,8)")
    g.add_argument("--limits-warmup", type=float, help="seconds not counted (default 30; quick 0)")
    g.add_argument("--limits-duration", type=float, help="seconds measured (default 30; quick 2)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the generated configs and process logs")
    args = p.parse_args(argv)
    try:
        args.scenario_list = parse_scenarios(args.scenarios)
    except ValueError as exc:
        p.error(str(exc))
    for name in ("rounds", "connections", "threads", "mock_workers", "loadgen_procs", "loadgen_connections",
                 "streams", "soak_requests", "limits_rpm"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("duration", "latency_duration", "timeout", "limits_duration"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.limits_warmup is not None and args.limits_warmup < 0:
        p.error("--limits-warmup must not be negative")
    if args.limits_workers is not None:
        try:
            args.limits_workers = tuple(int(x) for x in args.limits_workers.split(",") if x.strip())
        except ValueError:
            args.limits_workers = ()
        if not args.limits_workers or min(args.limits_workers) < 1:
            p.error("--limits-workers: comma-separated worker counts of at least 1")
    return args


def _settings(args: argparse.Namespace) -> Any:
    s = default_settings(args.quick)
    if args.server_cpus:
        s.server_cpus = parse_cpu_list(args.server_cpus)
    if args.load_cpus:
        s.load_cpus = parse_cpu_list(args.load_cpus)
    for name in ("rounds", "duration", "warmup", "connections", "threads", "timeout", "mock_workers",
                 "latency_duration",
                 "latency_upstream", "loadgen_procs", "loadgen_connections", "streams", "soak_requests",
                 "limits_rpm", "limits_workers", "limits_warmup", "limits_duration"):
        v = getattr(args, name)
        if v is not None:
            setattr(s, name, v)
    if args.latency_loads:
        s.latency_loads = tuple(float(x) for x in args.latency_loads.split(",") if x.strip())
    if args.no_auth:
        s.auth = False
    return s


def _check_cpus(s: Any) -> None:
    available = available_cpus()
    for opt, cpus in (("--server-cpus", s.server_cpus), ("--load-cpus", s.load_cpus)):
        bad = sorted(set(cpus) - set(available))
        if bad:
            raise BenchError(f"{opt}: CPU(s) {cpu_spec(bad)} not available (this process may use "
                             f"{cpu_spec(available)})")
    if len(available) == 1:
        log("WARNING: only 1 CPU available: servers and load share it; the figures mostly measure contention")
    elif set(s.server_cpus) & set(s.load_cpus):
        log("WARNING: the server and load CPUs overlap: the servers compete with the load side")
    quota = cgroup_cpu_quota()
    if quota is not None and quota < len(available):
        log(f"WARNING: the cgroup CPU quota is {quota:g} CPUs for {len(available)} visible CPUs")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.list:
        for n, sc in SCENARIOS.items():
            print(f"{n:<13} {sc.number}. {sc.title}")
        return 0
    settings = _settings(args)
    started = datetime.datetime.now()
    stamp = started.strftime("%Y-%m-%d-%H%M%S")
    out = Path(args.out) if args.out else REPO_ROOT / "bench" / "results" / stamp
    with terminate_as_exit():
        try:
            tools = find_tools()
            _check_cpus(settings)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
        raise_nofile_limit()  # the open-streams scenario holds thousands of connections per process
        machine = machine_info(tools)
        # keep the harness itself off the servers' CPUs (it mostly sleeps, but /proc reads and probes run)
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, settings.load_cpus)
        tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        names = args.scenario_list
        progress = Progress(len(names))
        suite = Suite(settings, tools, tmp, progress)
        results: dict[str, Any] = {
            "started": started.strftime("%Y-%m-%d %H:%M:%S"),
            "command": ["python", "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])],
            "quick": settings.quick, "settings": settings.as_dict(), "machine": machine, "scenarios": {},
        }
        t0 = time.monotonic()
        try:
            for i, name in enumerate(names):
                progress.scenario(i + 1)
                r = suite.run(name)
                results["scenarios"][name] = r
                progress.done(f"{name}: {r['status']} in {r['seconds']:g} s")
                _write(out, results)  # what ran so far survives an interrupted run
        finally:
            suite.stop_all()
            if args.keep_tmp:
                log(f"temp dir kept: {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - t0, 1)
    results["bar"] = evaluate_bar(results["scenarios"])
    results["plots"] = make_plots(results, out)
    _write(out, results)
    (out / "report.md").write_text(render_markdown(results, results["plots"]))
    for b in results["bar"]:
        log(f"bar {b['scenario']:<28} {b['measured']:<70.70} "
            + {True: "pass", False: "FAIL", None: "not measured"}[b["passed"]])
    log(f"report: {out / 'report.md'}")
    failed = [n for n, r in results["scenarios"].items() if r["status"] != "ok"]
    errors = [c["name"] for r in results["scenarios"].values() for c in r.get("cases", [])
              if "targets" in c and not c.get("ok")]
    errors += [n for n, r in results["scenarios"].items() if r.get("ok") is False]  # e.g. limits
    if failed or errors:
        log(f"problems: failed {failed or '-'}; targets with errors in {errors or '-'}")
        return 1
    return 0


def _write(out: Path, results: dict[str, Any]) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out / "results.json")


if __name__ == "__main__":
    raise SystemExit(main())
