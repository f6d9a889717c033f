"""The scenarios of the benchmark suite and how each is measured. ``bench/run.py`` runs them in order.

Every scenario starts its own processes (a ``Stack``: mock upstream, gateway, nginx) so that its figures
do not depend on what ran before, runs the gateway and its nginx baseline in the same run, and returns a
plain dict (it goes into ``results.json`` as is; ``bench/report.py`` renders it).

| scenario       | what                                                                              |
|----------------|-----------------------------------------------------------------------------------|
| chat           | 1. small non-stream chat completion: wrk, ABBA rounds, req/s and req/CPU-s        |
| prompts        | 2. the same with a 4 KB and a 32 KB prompt                                        |
| stream         | 3. streamed chat, 20 and 200 content chunks per response                          |
| local          | 4. answers without an upstream: unknown model (404), bad key (401), limited (429) |
| latency        | open-loop latency of the small chat at 50% and 80% of each target's saturation    |
| open-streams   | 5. thousands of slow streams held open by one worker: RSS per open stream         |
| scaling        | 6. one worker against two, gateway and nginx alike                               |
| soak           | 7. a million requests: RSS after warm-up against RSS at the end, errors           |
| limits         | 8. shared-state calls per admitted request at 10,000 requests/min (in process)    |

The gateway requires API keys in every scenario (a static key; the access phase runs on every request):
the bar is measured with every pipeline phase that exists switched on. Call records are off, as nginx's
access log is: both are a line per request, and neither is what is being compared.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.configs import BAD_KEY, LIMITED_KEY, MODEL
from bench.httpwire import build_request
from bench.loadgen import run_open_loop
from bench.procs import (
    HOST,
    REPO_ROOT,
    BenchError,
    available_cpus,
    cpu_pressure_us,
    cpu_spec,
    die_with_parent,
    http_request,
    machine_busy_seconds,
    tree_cpu_seconds,
    tree_rss_kb,
)
from bench.stack import Round, Stack, StackOptions, Target, wrk_round
from bench.wrk import wrk_lua, wrk_mix_lua

__all__ = [
    "CASES",
    "SCENARIOS",
    "Case",
    "Scenario",
    "Settings",
    "Suite",
    "latency_caveat",
    "prompt_text",
    "summarise_case",
]


# --- request bodies and checks ------------------------------------------------------------------------------

_WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
          "et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris").split()


def prompt_text(size: int) -> str:
    """Exactly ``size`` bytes of words (ASCII), deterministic."""
    out: list[str] = []
    n = 0
    i = 0
    while n < size:
        w = _WORDS[i % len(_WORDS)]
        out.append(w)
        n += len(w) + 1
        i += 1
    return " ".join(out)[:size]


def chat_body(content: str, *, model: str = MODEL, **extra: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def stream_body(chunks: int, *, delay_ms: int = 0, text: str = "Tell the benchmark a story.") -> bytes:
    # ``stream_options.include_usage`` is set by the client so the gateway forwards the bytes untouched
    # (without it the gateway adds it to meter usage, and the mock would see different bytes from the two
    # targets); ``max_tokens``: the mock splits the completion's words into at most ``chunks`` pieces
    directive = f"!mock chunks={chunks}" + (f" chunk_delay_ms={delay_ms}" if delay_ms else "")
    return chat_body(f"{directive} {text}", stream=True, stream_options={"include_usage": True},
                     max_tokens=2 * chunks)


def check_chat(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"status {status}"
    try:
        doc = json.loads(body)
        doc["choices"][0]["message"]["content"]  # a shape check: raises when it is not a completion
    except (ValueError, KeyError, IndexError, TypeError):
        return "not a chat completion"
    return None


def check_stream(chunks: int) -> Callable[[int, bytes], str | None]:
    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"status {status}"
        events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
        if not events or events[-1] != b"data: [DONE]":
            return "stream does not end with data: [DONE]"
        if len(events) < chunks + 1:
            return f"only {len(events)} stream events, expected at least {chunks + 1}"
        return None
    return check


def check_error(expect: int) -> Callable[[int, bytes], str | None]:
    def check(status: int, body: bytes) -> str | None:
        if status != expect:
            return f"status {status}, expected {expect}"
        try:
            json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return "not an OpenAI-shaped error"
        return None
    return check


@dataclass(frozen=True)
class Case:
    """One workload measured against both targets with wrk."""

    name: str
    description: str
    path: str
    body: bytes
    #: (status, whole response body) -> None when the response is what the case expects, else why not
    check: Callable[[int, bytes], str | None]
    expect_status: int = 200
    #: the key to send instead of the target's own (the bad-key and rate-limited cases)
    key: str | None = None
    #: nginx answers this path with a static ``return`` instead of proxying (no-upstream answers)
    nginx_path: str | None = None
    #: requests sent (answers not checked) before the probe, to use up a limit (the rate-limited case)
    use_up: int = 0

    @property
    def baseline(self) -> str:
        return "nginx static return" if self.nginx_path else "nginx proxy_pass"


CASES: dict[str, Case] = {c.name: c for c in (
    Case("chat", "small non-stream chat completion", "/v1/chat/completions",
         chat_body("Say hello to the benchmark."), check_chat),
    Case("chat-4k", "non-stream chat completion, 4 KB prompt", "/v1/chat/completions",
         chat_body(prompt_text(4096)), check_chat),
    Case("chat-32k", "non-stream chat completion, 32 KB prompt", "/v1/chat/completions",
         chat_body(prompt_text(32768)), check_chat),
    Case("stream-20", "streamed chat completion, 20 content chunks", "/v1/chat/completions",
         stream_body(20), check_stream(20)),
    Case("stream-200", "streamed chat completion, 200 content chunks", "/v1/chat/completions",
         stream_body(200), check_stream(200)),
    Case("notfound", "unknown model: 404 without an upstream", "/v1/chat/completions",
         chat_body("Say hello to the benchmark.", model="no-such-model"), check_error(404), 404,
         nginx_path="/static/404"),
    Case("badkey", "wrong API key: 401 without an upstream", "/v1/chat/completions",
         chat_body("Say hello to the benchmark."), check_error(401), 401, key=BAD_KEY,
         nginx_path="/static/401"),
    Case("ratelimited", "key over its limit (one a day): 429 without an upstream", "/v1/chat/completions",
         chat_body("Say hello to the benchmark."), check_error(429), 429, key=LIMITED_KEY,
         nginx_path="/static/429", use_up=1),
)}


@dataclass(frozen=True)
class Scenario:
    name: str
    number: str
    title: str
    cases: tuple[str, ...] = ()
    #: (what, why) of parts that cannot run yet
    skipped: tuple[tuple[str, str], ...] = ()


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("chat", "1", "Chat completion, small body, non-stream (the headline)", ("chat",)),
    Scenario("prompts", "2", "Chat completion with a 4 KB and a 32 KB prompt", ("chat-4k", "chat-32k")),
    Scenario("stream", "3", "Streamed chat, 20 and 200 chunks per response", ("stream-20", "stream-200")),
    Scenario("local", "4", "Requests answered without an upstream", ("notfound", "badkey", "ratelimited"),
             skipped=(("cache hit", "the response cache has not landed yet; add the case when it does"),)),
    Scenario("latency", "1", "Open-loop latency of the small chat completion at 50% and 80% of saturation"),
    Scenario("open-streams", "5", "Many concurrent slow streams held by one worker: memory per open stream"),
    Scenario("scaling", "6", "Scaling: 1 against 2 workers"),
    Scenario("soak", "7", "Soak: RSS after warm-up against RSS at the end, errors"),
    Scenario("limits", "8", "Limits: shared-state calls per admitted request at 10,000 requests/min"),
)}


# --- settings -----------------------------------------------------------------------------------------------


@dataclass
class Settings:
    server_cpus: list[int]
    load_cpus: list[int]
    rounds: int = 3
    duration: float = 5.0
    warmup: float = 2.0
    connections: int = 64
    threads: int = 1
    #: wrk's request timeout: generous, a 200-chunk stream through a busy machine may take a second
    timeout: float = 10.0
    mock_workers: int = 1
    auth: bool = True
    #: open-loop runs: load levels as fractions of saturation, seconds measured / warm-up, connections
    latency_loads: tuple[float, ...] = (0.5, 0.8)
    latency_duration: float = 10.0
    latency_warmup: float = 2.0
    loadgen_connections: int = 64
    loadgen_procs: int = 1
    #: "static": the targets proxy to a static nginx answering the mock's completion (cheap, so that the
    #: load CPUs, shared by the generator, stay below saturation); "mock": to the mock, as in scenario 1
    latency_upstream: str = "static"
    #: open streams: how many, the mock's pace
    streams: int = 5000
    stream_chunk_delay_ms: int = 1000
    stream_chunks: int = 90
    stream_settle: float = 3.0
    #: scaling: CPUs of the servers and of the load side
    scale_server_cpus: list[int] = field(default_factory=list)
    scale_load_cpus: list[int] = field(default_factory=list)
    #: soak: requests, seconds per wrk segment, fraction of the requests that is warm-up
    soak_requests: int = 1_000_000
    soak_segment: float = 10.0
    soak_warmup_fraction: float = 0.1
    #: limits: the policy's requests per minute, the deployments measured (one worker of each size, at
    #: its share of the load), seconds of warm-up (the lease sizing learns the rate) and measured
    limits_rpm: int = 10_000
    limits_workers: tuple[int, ...] = (1, 8)
    limits_warmup: float = 30.0
    limits_duration: float = 30.0
    quick: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def scaling_cpus(available: Sequence[int]) -> tuple[list[int], list[int]]:
    """Two CPUs for the servers and the rest for the load; on a machine of fewer than four CPUs everything
    shares all of them (the figures then include the load generator's and the mock's share)."""
    cpus = sorted(available)
    if len(cpus) >= 4:
        return cpus[:2], cpus[2:]
    return cpus, cpus


# --- summaries (pure) ---------------------------------------------------------------------------------------


def _median_or_none(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise_target(rounds: Sequence[Round], n_load: int, expect_status: int = 200) -> dict[str, Any]:
    """Medians over a target's rounds; ``errors``: answers other than the expected kind, socket errors."""
    errors: dict[str, int] = {}
    if expect_status < 400:
        errors["non_2xx"] = sum(r.wrk.non_2xx for r in rounds)
    else:  # every answer should be >= 400 (wrk counts those as "non-2xx"); the probe checked the status
        errors["not_an_error_status"] = sum(r.wrk.requests - r.wrk.non_2xx for r in rounds)
    for k in ("connect", "read", "write", "timeout"):
        errors[k] = sum(r.wrk.socket_errors[k] for r in rounds)
    p = [r.wrk.percentiles_ms for r in rounds]
    return {
        "median_rps": statistics.median(r.wrk.rps for r in rounds),
        "median_req_per_cpu_s": statistics.median(r.req_per_cpu_s for r in rounds),
        "median_server_cpu_util": statistics.median(r.server_cpu_s / r.wall_s for r in rounds),
        "median_load_cpu_util": statistics.median(r.load_cpu_s / (r.wall_s * n_load) for r in rounds),
        "median_other_cpu_util": _median_or_none([r.extra.get("other_cpu_util") for r in rounds]),
        "median_cpu_wait_share": _median_or_none([r.extra.get("cpu_wait_share") for r in rounds]),
        "p50_ms": _median_or_none([x.get("50") for x in p]),
        "p99_ms": _median_or_none([x.get("99") for x in p]),
        "errors": errors,
        "error_total": sum(errors.values()),
        "rounds": [r.as_dict(n_load) for r in rounds],
    }


def summarise_case(case: Case, rounds: Sequence[Round], n_load: int) -> dict[str, Any]:
    targets = {name: summarise_target([r for r in rounds if r.target == name], n_load, case.expect_status)
               for name in dict.fromkeys(r.target for r in rounds)}
    g, n = targets.get("gateway"), targets.get("nginx")
    return {
        "name": case.name, "description": case.description, "path": case.path,
        "nginx_path": case.nginx_path or case.path, "baseline": case.baseline,
        "expect_status": case.expect_status, "body_bytes": len(case.body),
        "targets": targets,
        "ratios": {
            "rps": ratio(g["median_rps"], n["median_rps"]) if g and n else None,
            "req_per_cpu_s": ratio(g["median_req_per_cpu_s"], n["median_req_per_cpu_s"]) if g and n else None,
        },
        "ok": all(t["error_total"] == 0 for t in targets.values()),
    }


# --- the runner ---------------------------------------------------------------------------------------------


class Suite:
    """Runs scenarios; ``progress(text)`` is told what runs."""

    def __init__(self, settings: Settings, tools: dict[str, Any], tmp: Path,
                 progress: Callable[[str], None]) -> None:
        self.s = settings
        self.tools = tools
        self.tmp = tmp
        self.progress = progress
        self.results: dict[str, Any] = {}
        self._stacks: list[Stack] = []

    # -- plumbing --

    def _stack(self, name: str, **overrides: Any) -> Stack:
        opts = StackOptions(server_cpus=list(self.s.server_cpus), load_cpus=list(self.s.load_cpus),
                            mock_workers=self.s.mock_workers, auth=self.s.auth, generator="bench/run.py")
        for k, v in overrides.items():
            setattr(opts, k, v)
        stack = Stack(self.tools, self.tmp / name, opts)
        self._stacks.append(stack)
        self.progress(f"{name}: starting the mock, the gateway and nginx")
        stack.start()
        return stack

    def _release(self, stack: Stack) -> None:
        stack.stop()
        if stack in self._stacks:
            self._stacks.remove(stack)

    def stop_all(self) -> None:
        for stack in list(self._stacks):
            self._release(stack)

    def _files(self, stack: Stack, case: Case, target: Target) -> tuple[str, Path]:
        """The URL path and the wrk script of ``case`` against ``target``."""
        body = stack.tmp / f"{case.name}.json"
        body.write_bytes(case.body)
        key = case.key or target.key
        lua = stack.tmp / f"{case.name}-{target.name}.lua"
        lua.write_text(wrk_lua(body, key, generator="bench/run.py"))
        path = case.nginx_path if target.name == "nginx" and case.nginx_path else case.path
        return path, lua

    def _probe(self, stack: Stack, case: Case, target: Target) -> None:
        path = case.nginx_path if target.name == "nginx" and case.nginx_path else case.path
        for _ in range(case.use_up):
            http_request(target.port, "POST", path, case.body, key=case.key or target.key, timeout=10.0)
        status, body = http_request(target.port, "POST", path, case.body, key=case.key or target.key,
                                    timeout=10.0)
        problem = case.check(status, body)
        if problem:
            raise BenchError(f"probe of {target.name} ({case.name}) failed: {problem}; response:\n"
                             f"{body[:1000]!r}\n{target.name} log:\n{target.service.log_tail()}")

    def _throughput(self, stack: Stack, case: Case, targets: Sequence[Target], label: str,
                    connections: int | None = None, threads: int | None = None) -> dict[str, Any]:
        s = self.s
        conns = connections or s.connections
        thr = threads or s.threads
        files = {t.name: self._files(stack, case, t) for t in targets}
        for t in targets:
            self._probe(stack, case, t)
        if s.warmup > 0:
            for t in targets:
                self.progress(f"{label}: warm-up {t.name} ({s.warmup:g} s)")
                wrk_round(stack, t, *files[t.name], 0, duration=s.warmup, connections=conns, threads=thr,
                          timeout=s.timeout)
        rounds: list[Round] = []
        for i in range(s.rounds):
            order = list(targets) if i % 2 == 0 else list(targets)[::-1]  # ABBA: drift hits both alike
            for t in order:
                self.progress(f"{label}: round {i + 1}/{s.rounds} {t.name}")
                rounds.append(wrk_round(stack, t, *files[t.name], i + 1, duration=s.duration,
                                        connections=conns, threads=thr, timeout=s.timeout))
        result = summarise_case(case, rounds, len(stack.opts.load_cpus))
        result["settings"] = {"connections": conns, "threads": thr, "rounds": s.rounds,
                              "duration_s": s.duration}
        return result

    # -- scenarios --

    def run(self, name: str) -> dict[str, Any]:
        sc = SCENARIOS[name]
        t0 = time.monotonic()
        runner = getattr(self, "_run_" + name.replace("-", "_"), None)
        out: dict[str, Any] = {"name": sc.name, "number": sc.number, "title": sc.title}
        try:
            if runner is not None:
                out.update(runner())
            else:
                out.update(self._run_cases(sc))
            out["status"] = "ok"
        except BenchError as exc:
            out["status"] = "failed"
            out["reason"] = str(exc)
            self.progress(f"{name}: FAILED: {str(exc).splitlines()[0]}")
        finally:
            self.stop_all()
        if sc.skipped:
            out["skipped"] = [{"what": w, "reason": r} for w, r in sc.skipped]
        out["seconds"] = round(time.monotonic() - t0, 1)
        self.results[name] = out
        return out

    def _run_cases(self, sc: Scenario) -> dict[str, Any]:
        limited = self.s.auth and any(CASES[c].key == LIMITED_KEY for c in sc.cases)
        stack = self._stack(sc.name, rate_limited_key=limited)
        targets = [stack.targets["gateway"], stack.targets["nginx"]]
        cases = []
        for i, cname in enumerate(sc.cases):
            case = CASES[cname]
            if case.key is not None and not self.s.auth:
                cases.append({"name": case.name, "description": case.description, "skipped":
                              "the gateway requires no keys in this run (--no-auth)"})
                continue
            label = f"{sc.name} [{i + 1}/{len(sc.cases)}] {cname}"
            cases.append(self._throughput(stack, case, targets, label))
        out: dict[str, Any] = {"cases": cases}
        if limited:  # the gateway's config had a [limits] policy: its admit phase ran on every request
            out["rate_limited_key"] = {"id": LIMITED_KEY.split("-")[1], "policy": "requests_per_day = 1"}
        return out

    def _saturation(self) -> tuple[dict[str, float], float | None, str]:
        """Each target's saturation (wrk req/s) and the upstream's CPU per request, in µs, from the chat
        scenario of this run when it used the same upstream."""
        chat = self.results.get("chat")
        if chat and chat.get("status") == "ok" and self.s.latency_upstream == "mock":
            t = chat["cases"][0]["targets"]
            rounds = t["gateway"]["rounds"]
            requests = max(1, sum(r["requests"] for r in rounds))
            up = sum(r.get("upstream_cpu_s", 0.0) for r in rounds) / requests
            return ({k: float(v["median_rps"]) for k, v in t.items()}, up * 1e6 or None,
                    "the chat scenario of this run (wrk)")
        return {}, None, ""

    def _run_latency(self) -> dict[str, Any]:
        s = self.s
        case = CASES["chat"]
        static = s.latency_upstream == "static"
        stack = self._stack("latency", static_upstream=case.body if static else None)
        targets = {t.name: t for t in (stack.targets["gateway"], stack.targets["nginx"])}
        sat, upstream_us, source = self._saturation()
        if not sat:  # measure it: one round per target
            source = "wrk in this scenario, one round per target, with the upstream of the open-loop runs"
            for t in targets.values():
                self._probe(stack, case, t)
                self.progress(f"latency: saturation of {t.name} (wrk {s.duration:g} s)")
                path, lua = self._files(stack, case, t)
                wrk_round(stack, t, path, lua, 0, duration=max(1.0, s.warmup), connections=s.connections,
                          threads=s.threads, timeout=s.timeout)
                r = wrk_round(stack, t, path, lua, 1, duration=s.duration, connections=s.connections,
                              threads=s.threads, timeout=s.timeout)
                sat[t.name] = r.wrk.rps
                if t.name == "gateway" and r.wrk.requests:
                    upstream_us = r.extra["upstream_cpu_s"] / r.wrk.requests * 1e6
        for t in targets.values():
            self._probe(stack, case, t)
        plan: list[tuple[str, str, float, float]] = []  # (target, relative to, fraction, rate)
        for f in s.latency_loads:
            plan.append(("gateway", "gateway", f, f * sat["gateway"]))
            plan.append(("nginx", "gateway", f, f * sat["gateway"]))  # the same offered load: added latency
            plan.append(("nginx", "nginx", f, f * sat["nginx"]))
        # the generator at the highest rate of the added-latency comparison; its CPU per request and the
        # upstream's tell which points the load CPUs can carry at all
        check = self._generator_check(stack, targets["nginx"], max(s.latency_loads) * sat["gateway"])
        generator_us = float(check["generator_cpu_s"]) / max(1, int(check["sent"])) * 1e6
        n_load = len(stack.opts.load_cpus)

        def load_share(rate: float) -> float:
            return rate * (generator_us + (upstream_us or 0.0)) / 1e6 / n_load

        points: list[dict[str, Any]] = []
        for i, (tname, rel, f, rate) in enumerate(plan):
            t = targets[tname]
            base = {"target": tname, "relative_to": rel, "fraction": f, "offered_rps": rate,
                    "predicted_load_cpu_util": load_share(rate)}
            if load_share(rate) > LOAD_LIMIT:
                base["skipped"] = (f"beyond the load CPUs: {load_share(rate):.0%} of them predicted "
                                   f"(generator {generator_us:.0f} µs + upstream {upstream_us or 0:.0f} µs "
                                   "per request)")
                points.append(base)
                continue
            self.progress(f"latency [{i + 1}/{len(plan)}] {tname} at {rate:,.0f} req/s "
                          f"({f:.0%} of {rel}'s saturation, {s.latency_duration:g} s)")
            point = self._open_loop(stack, t, case.path, case.body, rate, case.key or t.key)
            point.update(base)
            point["caveat"] = latency_caveat(point)
            points.append(point)
        added = {}
        for f in s.latency_loads:
            g = next(p for p in points if p["target"] == "gateway" and p["fraction"] == f)
            n = next(p for p in points if p["target"] == "nginx" and p["relative_to"] == "gateway"
                     and p["fraction"] == f)
            if "skipped" in g or "skipped" in n:
                continue
            caveats = "; ".join(f"{p['target']}: {p['caveat']}" for p in (g, n) if p.get("caveat"))
            added[f"{f:g}"] = {
                "offered_rps": g["offered_rps"],
                **{q: _diff(g["latency_ms"][q], n["latency_ms"][q]) for q in ("p50", "p90", "p99", "p99.9")},
                "valid": not caveats, "caveats": caveats,
            }
        return {"upstream": "nginx static return of the mock's completion" if static else "the mock",
                "saturation_rps": sat, "saturation_source": source, "generator_check": check,
                "generator_us_per_request": generator_us, "upstream_us_per_request": upstream_us,
                "points": points, "added_ms": added}

    def _generator_check(self, stack: Stack, nginx: Target, rate: float) -> dict[str, Any]:
        """The generator against nginx's static location at the highest rate of the run: no upstream, so
        what is left is the generator, the kernel and the cheapest possible server."""
        self.progress(f"latency: generator check, nginx static at {rate:,.0f} req/s")
        body = CASES["chat"].body
        point = self._open_loop(stack, nginx, "/static/200", body, rate, nginx.key)
        point["what"] = "the load generator against nginx's static return (no upstream)"
        point["caveat"] = latency_caveat(point)
        return point

    def _open_loop(self, stack: Stack, target: Target, path: str, body: bytes, rate: float,
                   key: str) -> dict[str, Any]:
        s = self.s
        upstream = stack.upstream
        assert upstream is not None
        request = build_request("POST", path, f"{HOST}:{target.port}", body, key=key)
        cpu0, mock0 = tree_cpu_seconds(target.service.pid), tree_cpu_seconds(upstream.pid)
        busy0, psi0 = machine_busy_seconds(), cpu_pressure_us()
        t0 = time.monotonic()
        r = run_open_loop(port=target.port, request=request, rate=rate, duration=s.latency_duration,
                          warmup=s.latency_warmup, connections=s.loadgen_connections, procs=s.loadgen_procs,
                          cpus=stack.load_cpus, taskset=self.tools["taskset"], timeout=3.0)
        wall = time.monotonic() - t0
        stack.check_alive()
        cpu1, mock1 = tree_cpu_seconds(target.service.pid), tree_cpu_seconds(upstream.pid)
        n_load = len(stack.opts.load_cpus)
        busy, psi1 = machine_busy_seconds() - busy0, cpu_pressure_us()
        r["cpu_wait_share"] = (psi1 - psi0) / 1e6 / wall if psi0 is not None and psi1 is not None else None
        # utilisations over the time the load ran (the wall time adds the generator's start and end)
        active = s.latency_warmup + s.latency_duration
        generator_cpu = r["generator_cpu_s"]
        r["server_cpu_util"] = (cpu1 - cpu0) / active
        r["upstream_cpu_util"] = (mock1 - mock0) / active
        r["load_cpu_util"] = ((mock1 - mock0) + generator_cpu) / (active * n_load)
        # what else kept the machine busy meanwhile (other work on a shared machine, and kernel work that
        # is charged to no process)
        r["other_cpu_util"] = max(0.0, busy - (cpu1 - cpu0) - (mock1 - mock0) - generator_cpu) / wall
        r["wall_s"] = wall
        return r

    def _run_open_streams(self) -> dict[str, Any]:
        s = self.s
        n = s.streams
        stack = self._stack("open-streams", pool_size=n + 256, nginx_connections=2 * n + 1024)
        body = stream_body(s.stream_chunks, delay_ms=s.stream_chunk_delay_ms, text="Hold this stream open.")
        body_path = stack.tmp / "slow-stream.json"
        body_path.write_bytes(body)
        out: dict[str, Any] = {"streams": n, "chunks": s.stream_chunks,
                               "chunk_delay_ms": s.stream_chunk_delay_ms, "body": body.decode(),
                               "targets": {}}
        for t in (stack.targets["gateway"], stack.targets["nginx"]):
            out["targets"][t.name] = self._hold_streams(stack, t, body_path, n)
        g, x = out["targets"]["gateway"], out["targets"]["nginx"]
        out["ratio_kb_per_stream"] = ratio(g.get("kb_per_stream"), x.get("kb_per_stream"))
        return out

    def _hold_streams(self, stack: Stack, t: Target, body_path: Path, n: int) -> dict[str, Any]:
        s = self.s
        # one short stream first: the path works and the worker has allocated what any stream needs
        status, _ = http_request(t.port, "POST", "/v1/chat/completions", stream_body(2), key=t.key,
                                 timeout=10)
        if status != 200:
            raise BenchError(f"open-streams: probe of {t.name} answered {status}")
        idle = []
        for _ in range(3):
            time.sleep(0.2)
            idle.append(t.worker_rss_kb())
        idle_kb = min(idle)
        self.progress(f"open-streams: {t.name}: opening {n:,} streams")
        argv = [self.tools["taskset"], "-c", stack.load_cpus, sys.executable, "-m", "bench.streams",
                "--port", str(t.port), "--streams", str(n), "--body-file", str(body_path), "--key", t.key,
                "--ready-timeout", str(max(30.0, n / 50)), "--hold", "600"]
        err_path = stack.tmp / f"streams-{t.name}.log"
        with open(err_path, "wb") as err:  # a file, not a pipe: nobody reads it while the client runs
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                    preexec_fn=die_with_parent, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready = _read_tagged(proc, "ready", timeout=max(30.0, n / 50) + 30, log=err_path)
            open_n = int(ready["open"])
            self.progress(f"open-streams: {t.name}: {open_n:,} of {n:,} open; measuring")
            time.sleep(s.stream_settle)
            cpu0, w0 = tree_cpu_seconds(t.service.pid), time.monotonic()
            samples = []
            for _ in range(5):
                samples.append(t.worker_rss_kb())
                time.sleep(0.4)
            cpu_util = (tree_cpu_seconds(t.service.pid) - cpu0) / (time.monotonic() - w0)
            tree_kb = tree_rss_kb(t.service.pid)
            open_kb = int(statistics.median(samples))
            proc.stdin.close()
            done = _read_tagged(proc, "done", timeout=60, log=err_path)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        time.sleep(1.0)
        after_kb = t.worker_rss_kb()
        still_open = int(done.get("open_at_release", open_n))
        return {
            "requested": n, "open": open_n, "open_at_release": still_open, "states": ready.get("states"),
            "open_seconds": ready.get("open_seconds"), "connect_errors": ready.get("connect_errors"),
            "idle_rss_kb": idle_kb, "open_rss_kb": open_kb, "rss_samples_kb": samples,
            "tree_rss_kb": tree_kb, "after_release_rss_kb": after_kb,
            "kb_per_stream": (open_kb - idle_kb) / open_n if open_n else None,
            "server_cpu_util_while_open": cpu_util,
            "events_per_s": open_n * 1000.0 / s.stream_chunk_delay_ms,
        }

    def _run_scaling(self) -> dict[str, Any]:
        s = self.s
        runs: dict[str, Any] = {}
        case = CASES["chat"]
        threads = max(s.threads, min(2, len(s.scale_load_cpus)))
        conns = max(s.connections, 64 * threads)
        for w in (1, 2):
            stack = self._stack(f"scaling-{w}w", gateway_workers=w, nginx_workers=w, mock_workers=2,
                                server_cpus=list(s.scale_server_cpus), load_cpus=list(s.scale_load_cpus))
            targets = [stack.targets["gateway"], stack.targets["nginx"]]
            runs[str(w)] = self._throughput(stack, case, targets, f"scaling {w} worker(s)", connections=conns,
                                            threads=threads)
            self._release(stack)
        scale = {}
        for name in ("gateway", "nginx"):
            one, two = runs["1"]["targets"][name], runs["2"]["targets"][name]
            scale[name] = {"rps": ratio(two["median_rps"], one["median_rps"]),
                           "req_per_cpu_s": ratio(two["median_req_per_cpu_s"], one["median_req_per_cpu_s"])}
        shared = set(s.scale_server_cpus) & set(s.scale_load_cpus)
        return {"server_cpus": s.scale_server_cpus, "load_cpus": s.scale_load_cpus,
                "shared_cpus": sorted(shared), "mock_workers": 2, "runs": runs, "two_over_one": scale}

    def _run_soak(self) -> dict[str, Any]:
        s = self.s
        stack = self._stack("soak", with_nginx=False)
        gw = stack.targets["gateway"]
        mix = [CASES["chat"], CASES["chat"], CASES["chat-4k"], CASES["stream-20"]]
        items = []
        for c in mix:
            self._probe(stack, c, gw)
            body = stack.tmp / f"{c.name}.json"
            body.write_bytes(c.body)
            items.append((c.path, body, gw.key))
        lua = stack.tmp / "soak.lua"
        lua.write_text(wrk_mix_lua(items, generator="bench/run.py"))
        samples: list[dict[str, Any]] = [{"requests": 0, "rss_kb": gw.worker_rss_kb(), "t": 0.0}]
        total = 0
        errors = {"non_2xx": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0}
        warm_target = int(s.soak_requests * s.soak_warmup_fraction)
        warm: dict[str, Any] | None = None
        t0 = time.monotonic()
        cpu0 = tree_cpu_seconds(gw.service.pid)
        segments = 0
        while total < s.soak_requests:
            segments += 1
            rss_mb = samples[-1]["rss_kb"] / 1024
            self.progress(f"soak: {total:,} of {s.soak_requests:,} requests; worker RSS {rss_mb:.1f} MB")
            r = wrk_round(stack, gw, "/v1/chat/completions", lua, segments, duration=s.soak_segment,
                          connections=s.connections, threads=s.threads, timeout=s.timeout)
            total += r.wrk.requests
            errors["non_2xx"] += r.wrk.non_2xx
            for k, v in r.wrk.socket_errors.items():
                errors[k] += v
            samples.append({"requests": total, "rss_kb": gw.worker_rss_kb(),
                            "t": round(time.monotonic() - t0, 2), "rps": r.wrk.rps})
            if warm is None and total >= warm_target:
                warm = samples[-1]
        cpu = tree_cpu_seconds(gw.service.pid) - cpu0
        end = samples[-1]
        assert warm is not None
        growth = ratio(end["rss_kb"] - warm["rss_kb"], warm["rss_kb"])
        return {"requests": total, "target_requests": s.soak_requests, "segments": segments,
                "mix": [c.name for c in mix], "errors": errors, "error_total": sum(errors.values()),
                "rss_start_kb": samples[0]["rss_kb"], "rss_warm_kb": warm["rss_kb"],
                "rss_warm_at_requests": warm["requests"], "rss_end_kb": end["rss_kb"], "rss_growth": growth,
                "seconds": round(time.monotonic() - t0, 1), "req_per_cpu_s": total / cpu if cpu else None,
                "samples": samples}

    def _run_limits(self) -> dict[str, Any]:
        """``python -m bench.inproc --limits`` once per deployment size, all at once (each is a paced,
        mostly idle process on the load CPUs; together they take the time of one)."""
        s = self.s
        d = self.tmp / "limits"
        d.mkdir(parents=True, exist_ok=True)
        procs: list[tuple[int, subprocess.Popen[bytes], Path, Path]] = []
        try:
            for w in s.limits_workers:
                out, log = d / f"workers-{w}.json", d / f"workers-{w}.log"
                argv = [self.tools["taskset"], "-c", cpu_spec(s.load_cpus), sys.executable, "-m",
                        "bench.inproc", "--limits", "--rpm", str(s.limits_rpm), "--workers", str(w),
                        "--warmup", str(s.limits_warmup), "--seconds", str(s.limits_duration),
                        "--json", str(out)]
                with open(log, "wb") as err:
                    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=err, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)
                procs.append((w, proc, out, log))
            sizes = " and ".join(str(w) for w in s.limits_workers)
            self.progress(f"limits: {s.limits_rpm:,} requests/min, one worker of {sizes} "
                          f"({s.limits_warmup:g} s warm-up + {s.limits_duration:g} s measured, in process)")
            runs = []
            for w, proc, out, log in procs:
                try:
                    proc.wait(s.limits_warmup + s.limits_duration + 60)
                except subprocess.TimeoutExpired:
                    raise BenchError(f"limits: the run of {w} worker(s) did not finish") from None
                if not out.exists():
                    raise BenchError(f"limits: the run of {w} worker(s) failed (exit {proc.returncode}):\n"
                                     + log.read_text(errors="replace")[-2000:])
                runs.append(json.loads(out.read_text()))
        finally:
            for _, proc, _, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return {"rpm": s.limits_rpm, "warmup_s": s.limits_warmup, "measured_s": s.limits_duration,
                "target_calls_per_request": LIMITS_TARGET, "runs": runs,
                "ok": all(r["errors"] == 0 for r in runs)}


#: issue 5's target: shared-state calls per admitted request at a limit of 10,000 requests/min
LIMITS_TARGET = 0.05

#: open-loop points that would load the load CPUs beyond this are not run; measured points beyond it are
#: marked as describing the load side
LOAD_LIMIT = 0.9


def latency_caveat(point: dict[str, Any]) -> str:
    """Why an open-loop point may describe the load side rather than the server ("" when none): the
    load CPUs were saturated, the achieved rate fell short, or the generator itself was late."""
    reasons = []
    if point.get("load_cpu_util") is not None and point["load_cpu_util"] >= LOAD_LIMIT:
        reasons.append("load CPUs saturated")
    if point.get("achieved_rps", 0) < 0.97 * point.get("offered_rps", 0):
        reasons.append("achieved < offered")
    lag = (point.get("lag_ms") or {}).get("p99")
    if lag is not None and lag > 1.0:
        reasons.append("generator late (send lag p99 > 1 ms)")
    if point.get("errors"):
        reasons.append("errors")
    return "; ".join(reasons)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _read_tagged(proc: subprocess.Popen[str], tag: str, timeout: float, log: Path) -> dict[str, Any]:
    """The JSON of the first stdout line of ``proc`` starting with ``tag``; BenchError on time-out or exit."""
    assert proc.stdout is not None
    box: dict[str, Any] = {}

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(tag + " "):
                box["value"] = json.loads(line[len(tag) + 1:])
                return

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    th.join(timeout)
    if "value" not in box:
        err = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise BenchError(f"the streams client gave no '{tag}' line within {timeout:.0f} s (exit "
                         f"{proc.poll()}):\n{err}")
    return dict(box["value"])


def default_settings(quick: bool) -> Settings:
    """Full-length or ``--quick`` (a harness check of a few seconds per scenario; not results)."""
    available = available_cpus()
    if len(available) >= 2:
        server, load = available[:1], available[1:]
    else:
        server = load = available
    sc_server, sc_load = scaling_cpus(available)
    s = Settings(server_cpus=server, load_cpus=load, scale_server_cpus=sc_server, scale_load_cpus=sc_load)
    if quick:
        s.rounds, s.duration, s.warmup = 1, 1.0, 0.0
        s.latency_duration, s.latency_warmup = 1.0, 0.3
        s.streams, s.stream_chunk_delay_ms, s.stream_chunks, s.stream_settle = 200, 500, 40, 0.5
        s.soak_requests, s.soak_segment = 20_000, 1.0
        s.limits_warmup, s.limits_duration = 0.0, 2.0
        s.quick = True
    return s
