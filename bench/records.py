"""What call records cost: the gateway with records off, the gateway with records on, and nginx, one run.

    python -m bench.records [--rounds 3] [--duration 6] [--connections 64] [--json PATH] [--quick]
                            [--flush-interval SECONDS]

Two stacks run side by side: one with the gateway (records off, as in every other scenario) and nginx,
one with a second gateway whose call records are on (the default of a real deployment: one JSON line per
request on stderr, here the service's log file) in front of its own mock. wrk loads each of the three
targets in turn, rounds alternating their order, with the small chat completion at 64 connections, and
the table gives req/s, req/CPU-s and p99 of each, with the ratios issue 19 asks for: records on against
nginx per core (at least 0.6x) and records on against records off at p99 (at most 1.2x).

Both gateways and nginx are pinned to the server CPUs; only one of them is loaded at a time. The second
stack's mock is a process of its own on the load CPUs, idle while the first stack is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from bench.procs import BenchError, http_request
from bench.proxy_vs_nginx import Bench, _fmt_ms, _fmt_ratio, _parse_args
from bench.rounds import finish, run_bench
from bench.stack import Round, Stack, StackOptions, Target, wrk_round

__all__ = ["RecordsBench", "format_records_table", "main"]

#: the target name of the gateway with call records on
RECORDS_ON = "gateway+records"


class RecordsBench(Bench):
    """``Bench`` with a third target: the gateway with call records on (a stack of its own)."""

    def __init__(self, args: argparse.Namespace, tmp: Path, tools: dict[str, Any]) -> None:
        super().__init__(args, tmp, tools)
        #: call records in the records-on gateway's log, counted once it has stopped
        self.records_written = 0
        self.on_stack = Stack(tools, tmp / "records-on", StackOptions(
            server_cpus=list(args.server_cpus), load_cpus=list(args.load_cpus),
            mock_workers=args.mock_workers, with_nginx=False, call_records=True,
            generator="bench/records.py",
            gateway_toml=(f"[records]\nflush_interval = {flush}"
                          if (flush := getattr(args, "flush_interval", None)) is not None else ""),
        ))

    def stop_all(self) -> None:
        super().stop_all()
        gateway = self.on_stack.targets.get("gateway")
        self.on_stack.stop()  # a clean stop: the gateway writes every record it holds first
        if gateway is not None:
            self.records_written = _count_records(gateway.service.log_path)

    def start(self) -> list[Target]:
        off, nginx = super().start()
        self.on_stack.start()
        on = self.on_stack.targets["gateway"]
        on.name = RECORDS_ON
        status, body = http_request(on.port, "POST", self.scenario.path, self.scenario.body, key=on.key,
                                    timeout=10.0)
        problem = self.scenario.check(status, body)
        if problem:
            raise BenchError(f"probe of {on.name} failed: {problem}; log:\n{on.service.log_tail()}")
        return [off, on, nginx]

    def round(self, target: Target, index: int, duration: int) -> Round:
        if target.name != RECORDS_ON:
            return super().round(target, index, duration)
        a = self.args
        return wrk_round(self.on_stack, target, self.scenario.path, self.lua_path("gateway"), index,
                         duration=duration, connections=a.connections, threads=a.threads, timeout=a.timeout)

    def summarise(self, targets: Any, rounds: list[Round]) -> dict[str, Any]:
        result = super().summarise(targets, rounds)
        t = result["targets"]
        on, off, nginx = t[RECORDS_ON], t["gateway"], t["nginx"]
        result["ratios"]["records_on_over_nginx"] = {
            "req_per_cpu_s": _r(on["median_req_per_cpu_s"], nginx["median_req_per_cpu_s"])}
        result["ratios"]["records_on_over_off"] = {
            "req_per_cpu_s": _r(on["median_req_per_cpu_s"], off["median_req_per_cpu_s"]),
            "p99": _r(on["p99_ms"], off["p99_ms"])}
        result["ok"] = result["ok"] and on["error_total"] == 0
        return result


def _r(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _count_records(path: Path) -> int:
    """Call records in the gateway's log (lines that are JSON objects with a request_id)."""
    n = 0
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for line in f:
            if line.startswith(b"{") and b'"request_id"' in line:
                n += 1
    return n


def format_records_table(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"small chat, {s['rounds']} round(s) x {s['duration_s']} s per target, wrk -t{s['threads']} "
        f"-c{s['connections']}; servers on CPU {s['server_cpus']}, wrk + mocks on CPU {s['load_cpus']}",
        "",
        f"{'target':<17}{'req/s':>11}{'req/CPU-s':>12}{'srv CPU':>9}{'p50':>11}{'p99':>11}{'errors':>8}",
    ]
    for name, t in result["targets"].items():
        lines.append(
            f"{name:<17}{t['median_rps']:>11,.0f}{t['median_req_per_cpu_s']:>12,.0f}"
            f"{t['median_server_cpu_util']:>9.0%}{_fmt_ms(t['p50_ms']):>11}{_fmt_ms(t['p99_ms']):>11}"
            f"{t['error_total']:>8}"
        )
    r = result["ratios"]
    lines += [
        "",
        f"records off / nginx, req/CPU-s: {_fmt_ratio(r['gateway_over_nginx']['req_per_cpu_s'])}",
        f"records on / nginx, req/CPU-s:  {_fmt_ratio(r['records_on_over_nginx']['req_per_cpu_s'])}"
        "   (issue 19: at least 0.60x)",
        f"records on / off, req/CPU-s:    {_fmt_ratio(r['records_on_over_off']['req_per_cpu_s'])}"
        "   (at least 0.90x)",
        f"records on / off, p99:          {_fmt_ratio(r['records_on_over_off']['p99'])}"
        "   (at most 1.20x)",
        f"call records written: {result['records_written']:,}",
    ]
    if not result["ok"]:
        lines += ["", "ERRORS: a target answered non-2xx or had socket errors; these are not results."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    flush = None
    if "--flush-interval" in argv:  # the records-on gateway's ``[records] flush_interval``
        at = argv.index("--flush-interval")
        flush = float(argv[at + 1])
        del argv[at:at + 2]
    args = _parse_args(["--scenario", "chat", *argv])
    args.flush_interval = flush
    done = run_bench(args, "bench-records-", RecordsBench)
    if done is None:
        return 2
    bench, result = done
    result["records_written"] = bench.records_written  # counted once its gateway has stopped
    return finish(args, result, format_records_table(result))


if __name__ == "__main__":
    raise SystemExit(main())
