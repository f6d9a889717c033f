"""The loop every wrk-against-nginx bench shares (proxy_vs_nginx, cache_vs_nginx, guard_cpu, records,
dialects): the run around a bench, and its measured rounds.

```
run_bench(args, prefix, make)                       measure(targets, args, round_of, describe, order)
  find wrk/nginx/taskset, check the CPUs              warm-up: each target once, args.warmup s
  pin this process to the load CPUs                   rounds: every target per round, in ``order``
  a temp dir → make(args, tmp, tools).run()             (``abba`` for two sides, ``rotated`` for more),
  stop every process, drop the temp dir                 one log line per round (``describe``)
finish(args, result, table)
  --json file, the table on stdout, exit 0/1
```

A bench's own module keeps what is its own: its command line, its targets and probes, how a round is
run, and its summary and table. A harness failure (a missing tool, a CPU not available, a target that
fails its probe, a process that does not answer in time) prints ``bench: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bench.procs import (
    BenchError,
    available_cpus,
    cgroup_cpu_quota,
    cpu_spec,
    find_tools,
    log,
    terminate_as_exit,
)
from bench.stack import Round, Target

__all__ = ["abba", "check_cpus", "finish", "measure", "rotated", "run_bench"]

class _Bench(Protocol):
    def run(self) -> dict[str, Any]: ...

    def stop_all(self) -> None: ...


B = TypeVar("B", bound=_Bench)


def check_cpus(args: argparse.Namespace) -> None:
    """``--server-cpus`` and ``--load-cpus`` against the CPUs this process may use (warnings for overlap,
    one CPU only, a cgroup quota); raises BenchError for a CPU that is not available."""
    available = available_cpus()
    if len(available) == 1:
        log(f"WARNING: only 1 CPU available ({available[0]}): server, wrk and mock share it, so the figures "
            "mostly measure contention; pinning everything to it")
        args.server_cpus = args.load_cpus = available
        return
    for opt, cpus in (("--server-cpus", args.server_cpus), ("--load-cpus", args.load_cpus)):
        bad = sorted(set(cpus) - set(available))
        if bad:
            raise BenchError(f"{opt}: CPU(s) {cpu_spec(bad)} not available (this process may use "
                             f"{cpu_spec(available)})")
    if set(args.server_cpus) & set(args.load_cpus):
        log("WARNING: --server-cpus and --load-cpus overlap: the server competes with wrk and the mock")
    quota = cgroup_cpu_quota()
    if quota is not None and quota < len(available):
        log(f"WARNING: the cgroup CPU quota is {quota:g} CPUs for {len(available)} visible CPUs: throttling "
            "can distort the figures")


def run_bench(
    args: argparse.Namespace, prefix: str, make: Callable[[argparse.Namespace, Path, dict[str, Any]], B]
) -> tuple[B, dict[str, Any]] | None:
    """The bench ``make`` builds, run in a temp dir (``prefix``) and stopped: (the bench, its result), or
    None after printing why it could not run (the caller exits 2)."""
    with terminate_as_exit():
        try:
            tools = find_tools()
            check_cpus(args)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return None
        # keep the harness itself off the server's CPUs (it mostly sleeps, but /proc reads and probes run)
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, args.load_cpus)
        tmp = Path(tempfile.mkdtemp(prefix=prefix))
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        bench = make(args, tmp, tools)
        try:
            result = bench.run()
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return None
        except subprocess.TimeoutExpired as exc:
            print(f"bench: timed out: {exc}", file=sys.stderr)
            return None
        finally:
            bench.stop_all()
            if args.keep_tmp:
                log(f"temp dir kept: {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return bench, result


def finish(args: argparse.Namespace, result: dict[str, Any], table: str) -> int:
    """The result to ``--json`` (when asked), the table to stdout; the exit code (1: a target erred)."""
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(table, flush=True)
    return 0 if result["ok"] else 1


def abba(targets: Sequence[Target], i: int) -> Sequence[Target]:
    """Round ``i``'s order: A B, then B A (drift hits both sides alike)."""
    return targets if i % 2 == 0 else targets[::-1]


def rotated(targets: Sequence[Target], i: int) -> Sequence[Target]:
    """Round ``i``'s order for three or more targets: rotated by one each round."""
    k = i % len(targets)
    return [*targets[k:], *targets[:k]]


def measure(
    targets: Sequence[Target], args: argparse.Namespace, round_of: Callable[[Target, int, int], Round],
    describe: Callable[[int, Round], str], order: Callable[[Sequence[Target], int], Sequence[Target]] = abba,
    label: str = "",
) -> list[Round]:
    """The warm-up (``args.warmup`` s per target, not kept) and ``args.rounds`` measured rounds of
    ``args.duration`` s each: ``round_of(target, index, seconds)``; ``describe(index, round)`` is each
    round's log line, ``label`` the warm-up lines' prefix."""
    if args.warmup > 0:
        for t in targets:
            log(f"{label}warm-up {t.name} ({args.warmup} s)")
            round_of(t, 0, args.warmup)
    rounds: list[Round] = []
    for i in range(args.rounds):
        for t in order(targets, i):
            r = round_of(t, i + 1, args.duration)
            rounds.append(r)
            log(describe(i + 1, r))
    return rounds
