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
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.configs import BENCH_KEY, MODEL, gateway_toml, nginx_conf
from bench.procs import (
    HOST,
    REPO_ROOT,
    BenchError,
    ProcCpu,
    Service,
    cpu_spec,
    free_ports,
    http_request,
    log,
    machine_info,
    parse_cpu_list,
    process_tree,
    read_proc_cpu,
    start_service,
    tree_cpu_seconds,
    wait_ready,
)
from bench.rounds import finish, measure, run_bench
from bench.stack import Round, Stack, StackOptions, Target, wrk_round
from bench.wrk import WrkResult, parse_wrk_output, wrk_lua

__all__ = [
    "BENCH_KEY",
    "MODEL",
    "REPO_ROOT",
    "SCENARIOS",
    "BenchError",
    "ProcCpu",
    "Round",
    "Scenario",
    "WrkResult",
    "format_table",
    "gateway_toml",
    "main",
    "nginx_conf",
    "parse_cpu_list",
    "parse_wrk_output",
    "process_tree",
    "read_proc_cpu",
    "tree_cpu_seconds",
]


# --- scenarios ----------------------------------------------------------------------------------------------

STREAM_CHUNKS = 20


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


def _check_message(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"status {status}"
    try:
        doc = json.loads(body)
        if doc["type"] != "message" or not doc["content"]:
            return "not a Messages API message"
    except (ValueError, KeyError, TypeError):
        return "not a Messages API message"
    return None


def anthropic_equivalent(openai_body: bytes, model: str = MODEL) -> bytes:
    """The Messages API body the gateway sends an Anthropic upstream for the OpenAI chat ``openai_body``:
    its translator's own output, so that nginx sends the upstream the very same bytes."""
    from gateway.dialects import openai_chat
    from gateway.providers import anthropic_translate

    return anthropic_translate.encode_request(openai_chat.decode_request(openai_body), model)


#: the headers the gateway's Anthropic provider sends besides the credential (nginx's client sends them)
ANTHROPIC_HEADERS = (("anthropic-version", "2023-06-01"),)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str
    body: bytes
    #: (status, whole response body) -> None when the response is what the scenario expects, else why not
    check: Callable[[int, bytes], str | None]
    #: the mock's wire format; ``anthropic``: the gateway's provider is an Anthropic one (it translates)
    upstream_dialect: str = "openai"
    #: what nginx is sent instead, when the gateway's request is not what the upstream gets (translation):
    #: the path, the body, the check of the answer and more headers
    nginx_path: str | None = None
    nginx_body: bytes | None = None
    nginx_check: Callable[[int, bytes], str | None] | None = None
    nginx_headers: tuple[tuple[str, str], ...] = ()

    def request_of(self, target: str) -> tuple[str, bytes, Callable[[int, bytes], str | None]]:
        """(path, body, check) of ``target`` (``gateway`` or ``nginx``)."""
        if target == "nginx" and self.nginx_body is not None:
            return self.nginx_path or self.path, self.nginx_body, self.nginx_check or self.check
        return self.path, self.body, self.check


_TRANSLATE_BODY = _chat_body("Say hello to the benchmark.", max_tokens=64)


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
        # issue 15's bar: an OpenAI request translated to an Anthropic upstream, against nginx proxying
        # the equivalent Messages API request (the bytes the gateway sends) to the same upstream
        Scenario(
            "translate", "OpenAI chat translated to an Anthropic upstream (nginx: the equivalent "
            "Messages API body)", "/v1/chat/completions", _TRANSLATE_BODY, _check_chat,
            upstream_dialect="anthropic", nginx_path="/v1/messages",
            nginx_body=anthropic_equivalent(_TRANSLATE_BODY), nginx_check=_check_message,
            nginx_headers=ANTHROPIC_HEADERS,
        ),
    )
}


# --- the run ------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, tools: dict[str, Any]) -> None:
        self.args = args
        self.tmp = tmp
        self.tools = tools
        self.scenario = SCENARIOS[args.scenario]
        self.server_cpus = cpu_spec(args.server_cpus)
        self.load_cpus = cpu_spec(args.load_cpus)
        self.stack = Stack(tools, tmp, StackOptions(
            server_cpus=list(args.server_cpus), load_cpus=list(args.load_cpus),
            mock_workers=args.mock_workers,
            generator="bench/proxy_vs_nginx.py",
            upstream_dialect=self.scenario.upstream_dialect,
        ))
        #: processes started beside the stack (``start_gateway``, a Redis): stopped first, newest first
        self.extra: list[Service] = []

    def stop_all(self) -> None:
        for svc in reversed(self.extra):
            svc.stop()
        self.stack.stop()

    def start_gateway(self, name: str, section: str, generator: str) -> tuple[int, Service]:
        """A one-worker gateway on the server CPUs in front of the stack's upstream, its config the
        default one plus ``section``; ready when returned."""
        import os
        import sys

        (port,) = free_ports(1)
        config = self.tmp / f"{name}.toml"
        config.write_text(gateway_toml(port, self.stack.upstream_port, generator=generator) + section)
        svc = start_service(name, self.stack.pinned(self.server_cpus, [
            sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "1",
            "--host", HOST, "--port", str(port),
        ]), self.tmp, env={**os.environ, "BENCH_KEY": BENCH_KEY})
        self.extra.append(svc)
        wait_ready(svc, port, "/readyz")
        return port, svc

    def lua_path(self, target: str) -> Path:
        return self.tmp / f"body-{target}.lua"

    def start(self) -> list[Target]:
        sc = self.scenario
        for name in ("gateway", "nginx"):
            body_path = self.tmp / f"body-{name}.json"
            body_path.write_bytes(sc.request_of(name)[1])
            headers = sc.nginx_headers if name == "nginx" else ()
            self.lua_path(name).write_text(wrk_lua(body_path, BENCH_KEY, generator="bench/proxy_vs_nginx.py",
                                                   headers=headers))
        self.stack.start()
        targets = [self.stack.targets["gateway"], self.stack.targets["nginx"]]
        for t in targets:  # one real request each: a broken path fails here, not as a table of errors
            path, req_body, check = sc.request_of(t.name)
            extra = sc.nginx_headers if t.name == "nginx" else ()
            status, body = http_request(t.port, "POST", path, req_body, key=t.key, timeout=10.0, extra=extra)
            problem = check(status, body)
            if problem:
                raise BenchError(f"probe of {t.name} ({self.scenario.name}) failed: {problem}; response:\n"
                                 f"{body[:1000]!r}\n{t.service.name} log:\n{t.service.log_tail()}")
        return targets

    def round(self, target: Target, index: int, duration: int) -> Round:
        a = self.args
        path = self.scenario.request_of(target.name)[0]
        return wrk_round(self.stack, target, path, self.lua_path(target.name), index, duration=duration,
                         connections=a.connections, threads=a.threads, timeout=a.timeout)

    def run(self) -> dict[str, Any]:
        a = self.args
        targets = self.start()

        def describe(i: int, r: Round) -> str:
            return (f"round {i}/{a.rounds} {r.target:<8} {r.wrk.rps:>10,.0f} req/s "
                    f"{r.req_per_cpu_s:>10,.0f} req/CPU-s  server CPU {r.server_cpu_s / r.wall_s:4.0%}  "
                    f"p99 {_fmt_ms(r.wrk.percentiles_ms.get('99'))}  errors {r.wrk.errors}")

        rounds = measure(targets, a, self.round, describe)
        result = self.summarise([t.name for t in targets], rounds)
        result["machine"] = machine_info(self.tools)
        if self.scenario.upstream_dialect == "anthropic":
            from bench import translate  # the translation's own CPU, in this process (no sockets)

            log("the translation's own CPU, in process (python -m bench.translate)")
            result["translation_us"] = translate.measure(2000 if a.quick else 20000)
        return result

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
                         "path": self.scenario.path, "body": self.scenario.body.decode(),
                         "upstream_dialect": self.scenario.upstream_dialect,
                         "nginx_path": self.scenario.request_of("nginx")[0],
                         "nginx_body": self.scenario.request_of("nginx")[1].decode()},
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
    tr = result.get("translation_us")
    if tr is not None:
        lines += [
            "",
            f"the translation's own CPU per request, in process (python -m bench.translate): "
            f"{tr['per_request']:.2f} us (request {tr['request']:.2f} us, answer {tr['answer']:.2f} us); "
            f"a stream of {tr['deltas']:g} deltas {tr['stream']:.2f} us",
        ]
    if not result["ok"]:
        lines += ["", "ERRORS: a target answered non-2xx or had socket errors; these are not results."]
    return "\n".join(lines)


# --- CLI ----------------------------------------------------------------------------------------------------


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


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    done = run_bench(args, "bench-proxy-vs-nginx-", Bench)
    if done is None:
        return 2
    return finish(args, done[1], format_table(done[1]))


if __name__ == "__main__":
    raise SystemExit(main())
