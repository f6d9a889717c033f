"""What guardrails cost a real gateway: server CPU per chat request, guard off and on, in the same run.

    python -m bench.guard_cpu [--prompt clean|pii] [--rounds 3] [--duration 6] [--json PATH] [--quick]

The rig of ``bench.proxy_vs_nginx`` (same options, same CPU pinning, wrk as the load) with the fast
upstream of its stack (a static nginx on the load CPUs that answers every chat completion with what the
mock answered once: the upstream costs the server nothing beyond its socket), and two targets sent the
same chat request (the 600-byte prompt of ``bench.guard_inproc``):

    target      | config
    ------------+---------------------------------------------------------------------------------------
    guard-off   | the gateway (one worker), no [guardrails]
    guard-on    | the gateway (one worker), the typical policy of ``bench.guard_inproc`` on every request
                | (e-mail, phone, IBAN masked and card, API keys refused in prompts; e-mail masked and
                | card, API keys refused in answers; a deny list)

``--prompt clean``: ordinary text, nothing found (the common case); ``--prompt pii``: the text with an
e-mail address and a phone number, masked (the body rewritten) and restored in the answer.

The figure is the server's CPU per request (its whole process tree, user + system, from ``/proc``, over
the requests wrk completed): the kernel's share of a real request (sockets, the upstream connection)
included, which the in-process rig leaves out. The issue's target: guard-on costs at most 15% more than
guard-off. Rounds alternate the targets (ABBA), so a drift of the machine touches both alike.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.configs import BENCH_KEY, MODEL
from bench.guard_inproc import _PII, _TEXT, GUARD
from bench.procs import (
    BenchError,
    http_request,
    machine_info,
)
from bench.proxy_vs_nginx import Bench, Scenario, _check_chat, _parse_args
from bench.rounds import finish, measure, run_bench
from bench.stack import Round, Stack, StackOptions, Target

__all__ = ["GuardCpuBench", "main"]

GENERATOR = "bench/guard_cpu.py"


def _body(prompt: str) -> bytes:
    content = _PII if prompt == "pii" else _TEXT
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]},
                      separators=(",", ":")).encode()


class GuardCpuBench(Bench):
    """``Bench`` without nginx as a target: two gateways of its own, guard off and on."""

    def __init__(self, args: Any, tmp: Path, tools: dict[str, Any]) -> None:
        args.scenario = "chat"
        super().__init__(args, tmp, tools)
        body = _body(args.prompt)
        self.scenario = Scenario("chat", f"chat completion, {args.prompt} 600-byte prompt",
                                 "/v1/chat/completions", body, _check_chat)
        self.stack = Stack(tools, tmp, StackOptions(
            server_cpus=list(args.server_cpus), load_cpus=list(args.load_cpus),
            mock_workers=args.mock_workers, with_gateway=False, with_nginx=False, static_upstream=body,
            generator=GENERATOR,
        ))

    def _gateway(self, name: str, section: str) -> Target:
        port, svc = self.start_gateway(name, section, GENERATOR)
        status, answer = http_request(port, "POST", self.scenario.path, self.scenario.body, key=BENCH_KEY)
        problem = self.scenario.check(status, answer)
        if problem:
            raise BenchError(f"probe of {name} failed: {problem}; {answer[:500]!r}\n{svc.log_tail()}")
        return Target(name, port, svc, BENCH_KEY)

    def start(self) -> list[Target]:
        from bench.wrk import wrk_lua

        # one wrk script per target (``lua_path``), all sending the same body
        for name in ("guard-off", "guard-on"):
            body_path = self.tmp / f"body-{name}.json"
            body_path.write_bytes(self.scenario.body)
            self.lua_path(name).write_text(wrk_lua(body_path, BENCH_KEY, generator=GENERATOR))
        self.stack.start()
        off, on = self._gateway("guard-off", ""), self._gateway("guard-on", GUARD)
        # the policy is on where it should be, and only there: a card number is refused by guard-on only
        card = json.dumps({"model": MODEL,
                           "messages": [{"role": "user", "content": "card 4111 1111 1111 1111"}]})
        for t, want in ((off, 200), (on, 400)):
            status, answer = http_request(t.port, "POST", self.scenario.path, card.encode(), key=t.key)
            if status != want:
                raise BenchError(f"{t.name} answered {status} to a card number, not {want}: {answer[:500]!r}")
        return [off, on]

    def run(self) -> dict[str, Any]:
        a = self.args
        targets = self.start()

        def describe(i: int, r: Round) -> str:
            us = 1e6 / r.req_per_cpu_s if r.req_per_cpu_s else 0.0
            return (f"round {i}/{a.rounds} {r.target:<10} {r.wrk.rps:>10,.0f} req/s "
                    f"{us:>8.1f} us CPU/req  errors {r.wrk.errors}")

        rounds = measure(targets, a, self.round, describe)  # ABBA: drift hits both sides alike
        out: dict[str, Any] = {"prompt": a.prompt, "targets": {}, "machine": machine_info(self.tools)}
        for t in targets:
            rs = [r for r in rounds if r.target == t.name]
            per_s = statistics.median(r.req_per_cpu_s for r in rs)
            out["targets"][t.name] = {
                "median_rps": statistics.median(r.wrk.rps for r in rs),
                "median_req_per_cpu_s": per_s,
                "median_cpu_us_per_req": 1e6 / per_s if per_s else None,
                "errors": sum(r.wrk.errors for r in rs),
                "rounds": [r.as_dict(len(a.load_cpus)) for r in rs],
            }
        off = out["targets"]["guard-off"]["median_cpu_us_per_req"]
        on = out["targets"]["guard-on"]["median_cpu_us_per_req"]
        out["guard_overhead"] = (on - off) / off if on and off else None
        out["ok"] = all(v["errors"] == 0 for v in out["targets"].values())
        return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--prompt", choices=("clean", "pii"), default="clean")
    known, rest = pre.parse_known_args(argv)
    args = _parse_args(rest)
    args.prompt = known.prompt
    done = run_bench(args, "bench-guard-cpu-", GuardCpuBench)
    if done is None:
        return 2
    result = done[1]
    lines = [f"prompt: {args.prompt}", f"{'target':<10} {'req/s':>10} {'req/CPU-s':>10} {'CPU/req':>10}"]
    for name, v in result["targets"].items():
        lines.append(f"{name:<10} {v['median_rps']:>10,.0f} {v['median_req_per_cpu_s']:>10,.0f} "
                     f"{v['median_cpu_us_per_req'] or 0:>7.1f} us")
    overhead = result["guard_overhead"]
    if overhead is not None:
        lines.append(f"guard-on costs {overhead:+.1%} server CPU per request over guard-off (target: at most "
                     "+15%)")
    return finish(args, result, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
