"""The benchmark suite (``python -m bench.run``): its pure parts, the load generator and the streams client
against small in-test servers, and one ``--quick`` run of a cheap scenario end to end. Nothing here
asserts anything about speed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # ``bench`` is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench import configs, inproc, loadgen, report, routing, run, suite  # noqa: E402
from bench.histogram import Histogram, bucket_index, bucket_range  # noqa: E402
from bench.httpwire import ResponseParser, build_request  # noqa: E402
from bench.wrk import wrk_lua, wrk_mix_lua  # noqa: E402

# --- the histogram ------------------------------------------------------------------------------------------


def _exact(values: list[int], p: float) -> int:
    s = sorted(values)
    return s[max(1, math.ceil(p / 100 * len(s))) - 1]


def test_buckets_hold_their_values_within_a_thousandth() -> None:
    for v in [*range(0, 5000), 65_535, 65_536, 10**6, 123_456_789, 2**40 + 3]:
        lo, hi = bucket_range(bucket_index(v))
        assert lo <= v <= hi
        assert hi - lo <= max(0, v // 1000)


def test_percentiles_match_the_exact_ones() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(6, 1.5)) for _ in range(20_000)]
    h = Histogram()
    h.record_many(values)
    assert h.total == len(values) and h.min == min(values) and h.max == max(values)
    for p in (0.1, 50, 90, 99, 99.9):
        exact = _exact(values, p)
        got = h.percentile(p)
        assert got is not None and exact <= got <= exact + max(0, exact // 1000)
    assert h.percentile(100) == max(values)
    assert h.mean() == pytest.approx(sum(values) / len(values))


def test_small_values_are_exact_and_empty_has_none() -> None:
    h = Histogram()
    assert h.percentile(50) is None and h.summary()["p50"] is None
    h.record_many([1, 2, 3, 4])
    assert [h.percentile(p) for p in (25, 50, 75, 100)] == [1, 2, 3, 4]
    h.record(-5)  # clamped: a clock step must not break the histogram
    assert h.min == 0


def test_merge_and_serialisation() -> None:
    rng = random.Random(1)
    a_vals = [rng.randrange(10**6) for _ in range(3000)]
    b_vals = [rng.randrange(10**3) for _ in range(3000)]
    a, b, both = Histogram(), Histogram(), Histogram()
    a.record_many(a_vals)
    b.record_many(b_vals)
    both.record_many(a_vals + b_vals)
    a.merge(Histogram.from_dict(json.loads(json.dumps(b.to_dict()))))
    assert a.counts == both.counts[:len(a.counts)] and a.total == both.total
    assert (a.min, a.max, a.sum) == (both.min, both.max, both.sum)
    for p in (50, 99, 99.9):
        assert a.percentile(p) == both.percentile(p)
    assert a.summary(scale=0.001)["p50"] == pytest.approx(both.percentile(50) * 0.001)  # type: ignore[operator]


# --- the open-loop schedule ---------------------------------------------------------------------------------


def test_processes_share_the_schedule_without_gaps_or_overlaps() -> None:
    rate, start, procs = 1000.0, 100.0, 3
    times = sorted(loadgen.schedule_time(i, start, rate, k, procs) for k in range(procs) for i in range(100))
    assert times == pytest.approx([start + n / rate for n in range(300)])


@pytest.mark.parametrize("procs", [1, 2, 3])
def test_due_count_counts_what_is_due(procs: int) -> None:
    rate, start = 250.0, 10.0
    for k in range(procs):
        due = [loadgen.schedule_time(i, start, rate, k, procs) for i in range(200)]
        for now in (start - 1, start, start + 0.0001, start + 0.013, start + 0.4, start + 0.79999):
            assert loadgen.due_count(now, start, rate, k, procs) == sum(1 for t in due if t <= now + 1e-12)


def test_split_connections() -> None:
    assert loadgen.split_connections(64, 1) == [64]
    assert loadgen.split_connections(64, 3) == [22, 21, 21]
    assert loadgen.split_connections(2, 4) == [1, 1, 1, 1]


def test_merge_results_sums_processes() -> None:
    parts = []
    for k in range(2):
        lat, lag = Histogram(), Histogram()
        lat.record_many([1000 * (k + 1)] * 100)
        lag.record_many([10] * 100)
        parts.append({"latency_us": lat.to_dict(), "service_us": lat.to_dict(), "lag_us": lag.to_dict(),
                      "statuses": {"200": 100}, "scheduled": 100, "sent": 100, "completed": 100,
                      "unanswered": k, "unsent": 0, "max_backlog": 3 + k, "cpu_s": 0.5})
    r = loadgen.merge_results(parts, rate=200.0, duration=1.0)
    assert r["statuses"] == {"200": 200} and r["completed"] == 200
    assert r["achieved_rps"] == pytest.approx(200.0)
    assert r["latency_ms"]["p50"] == pytest.approx(1.0) and r["latency_ms"]["max"] == pytest.approx(2.0)
    assert r["errors"] == 1 and r["max_backlog"] == 4 and r["generator_cpu_s"] == pytest.approx(1.0)


# --- HTTP framing -------------------------------------------------------------------------------------------


def _response(body: bytes, status: int = 200) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status, len(body), body)


def _chunked(events: list[bytes], trailer: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n" + trailer + b"\r\n"


def test_parser_frames_content_length_whole_split_and_pipelined() -> None:
    one = _response(b'{"ok":true}')
    assert ResponseParser().feed(one) == [200]
    p = ResponseParser()
    got = []
    for i in range(len(one)):
        got += p.feed(one[i:i + 1])
    assert got == [200] and p.status is None
    two = _response(b"{}", 404) + _response(b"x" * 5000)
    p = ResponseParser()
    assert p.feed(two[:100]) == [404]
    assert p.feed(two[100:]) == [200]


def test_parser_frames_chunked_streams_and_counts_events() -> None:
    events = [b'data: {"n":%d}\n\n' % i for i in range(5)] + [b"data: [DONE]\n\n"]
    for trailer in (b"", b"X-Trailer: 1\r\n"):
        data = _chunked(events, trailer) + _response(b"{}")
        p = ResponseParser()
        assert p.feed(data[:120]) == []
        assert p.status == 200 and p.body_bytes > 0 and p.events >= 1
        assert p.feed(data[120:]) == [200, 200]
        p = ResponseParser()
        got = []
        for i in range(0, len(data), 7):
            got += p.feed(data[i:i + 7])
        assert got == [200, 200]


def test_parser_bodiless_interim_and_malformed() -> None:
    assert ResponseParser().feed(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n") == [204]
    assert ResponseParser().feed(b"HTTP/1.1 100 Continue\r\n\r\n" + _response(b"{}")) == [200]
    with pytest.raises(ValueError):
        ResponseParser().feed(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_build_request() -> None:
    req = build_request("POST", "/v1/chat/completions", "127.0.0.1:80", b'{"a":1}', key="k")
    head, body = req.split(b"\r\n\r\n")
    assert body == b'{"a":1}'
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert b"Content-Length: 7" in lines and b"Authorization: Bearer k" in lines


# --- the load generator and the streams client against small servers ----------------------------------------


@pytest.fixture
def tiny_server() -> Iterator[tuple[int, dict[str, int]]]:
    """A keep-alive HTTP server on a thread: a JSON answer, or a slow chunked stream for ``stream`` bodies."""
    stats = {"requests": 0}
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(n)
                stats["requests"] += 1
                if b"stream" in body:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for i in range(100):
                        ev = b"data: %d\n\n" % i
                        writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                        await writer.drain()
                        await asyncio.sleep(0.1)
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(_response(b'{"ok":true}'))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    loop = asyncio.new_event_loop()

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            box["port"] = server.sockets[0].getsockname()[1]
            box["stop"] = stop = asyncio.Event()
            ready.set()
            await stop.wait()
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert ready.wait(10)
    yield box["port"], stats
    loop.call_soon_threadsafe(box["stop"].set)
    th.join(10)


def test_open_loop_generator_sends_the_schedule(tiny_server: tuple[int, dict[str, int]]) -> None:
    port, stats = tiny_server
    request = build_request("POST", "/x", f"127.0.0.1:{port}", b"{}")
    r = loadgen.run_open_loop(port=port, request=request, rate=400.0, duration=0.5, warmup=0.25, connections=4,
                              procs=2, timeout=2.0, nice=0)
    assert r["errors"] == 0 and r["unsent"] == 0 and r["unanswered"] == 0
    assert r["scheduled"] == 300 and r["sent"] == 300 == stats["requests"]
    assert r["statuses"] == {"200": 200}  # the warm-up's 100 are sent but not recorded
    assert r["achieved_rps"] == pytest.approx(400.0)
    assert r["latency_ms"]["count"] == 200 and r["latency_ms"]["p50"] > 0
    assert r["lag_ms"]["count"] == 200


def test_streams_client_holds_streams_open(tiny_server: tuple[int, dict[str, int]], tmp_path: Path) -> None:
    port, _ = tiny_server
    body = tmp_path / "body.json"
    body.write_text('{"stream": true}')
    proc = subprocess.Popen([sys.executable, "-m", "bench.streams", "--port", str(port), "--streams", "20",
                             "--body-file", str(body), "--ready-timeout", "10", "--hold", "20"],
                            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("ready "), ready
        state = json.loads(ready[6:])
        assert state["open"] == 20 and state["states"] == {"open": 20}
        proc.stdin.close()
        done = json.loads(proc.stdout.readline()[5:])
        assert done["open_at_release"] == 20
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# --- configs and scripts ------------------------------------------------------------------------------------


def test_gateway_toml_with_keys_is_a_valid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.auth import digest
    from gateway.config import load_config_text

    monkeypatch.setenv("BENCH_KEY", configs.BENCH_KEY)
    text = configs.gateway_toml(18080, 19000, workers=2, auth_digest=configs.gateway_key_digest(),
                                store_path=tmp_path / "keys.db", pool_size=6000)
    config = load_config_text(text, "bench.toml")
    assert config.auth.required is True and config.server.workers == 2
    (key,) = config.auth.keys
    assert key.id == configs.GATEWAY_KEY_ID and configs.GATEWAY_KEY.startswith(f"gw-{key.id}-")
    assert key.digest == digest(configs.GATEWAY_KEY.split("-")[2], b"")
    assert configs.BAD_KEY.split("-")[1] == key.id and configs.BAD_KEY != configs.GATEWAY_KEY
    assert config.upstream.pool_size == 6000
    assert config.log.call_records is False and config.admin.enabled is False
    assert not config.limits.policies  # no [limits]: no admit phase


def test_gateway_toml_with_the_rate_limited_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.auth import digest
    from gateway.config import load_config_text

    monkeypatch.setenv("BENCH_KEY", configs.BENCH_KEY)
    text = configs.gateway_toml(18080, 19000, auth_digest=configs.gateway_key_digest(),
                                store_path=tmp_path / "keys.db", limited_digest=configs.limited_key_digest())
    config = load_config_text(text, "bench.toml")
    plain, limited = config.auth.keys
    assert plain.id == configs.GATEWAY_KEY_ID and plain.limit_policy is None
    assert limited.id == configs.LIMITED_KEY_ID and limited.limit_policy == configs.LIMITED_POLICY
    assert limited.digest == digest(configs.LIMITED_KEY.split("-")[2], b"")
    assert config.limits.policies[configs.LIMITED_POLICY].requests_per_day == 1
    with pytest.raises(ValueError):
        configs.gateway_toml(18080, 19000, limited_digest="sha256:x")


def test_nginx_configs(tmp_path: Path) -> None:
    conf = configs.nginx_conf(tmp_path, 18081, 19000, workers=2, worker_connections=11000, rlimit_nofile=23000)
    for directive in ("worker_processes 2;", "worker_rlimit_nofile 23000;", "worker_connections 11000;",
                      "location = /static/404", "return 401 '", "client_body_buffer_size 64k;",
                      "location = /static/429", "add_header retry-after 86400 always;"):
        assert directive in conf
    for status, body in configs.STATIC_BODIES.items():
        json.loads(body)
        assert f"return {status} '{body}';" in conf
    answer = b'{"choices":[{"message":{"content":"hi"}}]}'
    up = configs.static_upstream_conf(tmp_path, 19001, answer)
    assert f"return 200 '{answer.decode()}';" in up and "listen 127.0.0.1:19001;" in up
    with pytest.raises(ValueError):
        configs.static_upstream_conf(tmp_path, 19001, b"{\"a\":\"it's\"}")


def test_wrk_scripts_quote_their_strings(tmp_path: Path) -> None:
    lua = wrk_lua(tmp_path / 'we"ird.json', "k\\ey")
    assert '"Bearer k\\\\ey"' in lua and 'we\\"ird.json' in lua
    mix = wrk_mix_lua([("/a", tmp_path / "a.json", "k1"), ("/b", tmp_path / "b.json", "k2")])
    assert mix.count("Bearer k") == 2 and "function request()" in mix


def test_case_bodies_are_what_the_cases_say() -> None:
    for case in suite.CASES.values():
        body = json.loads(case.body)
        if body.get("stream"):
            assert body["stream_options"] == {"include_usage": True}  # no rewrite by the gateway
        assert case.check(599, b"") is not None
    assert len(suite.prompt_text(4096)) == 4096 and suite.prompt_text(5) == "lorem"
    assert 4096 < len(suite.CASES["chat-4k"].body) < 4096 + 200
    assert suite.CASES["notfound"].check(404, json.dumps({"error": {"message": "x"}}).encode()) is None
    assert suite.CASES["badkey"].check(200, b"{}") is not None
    limited = suite.CASES["ratelimited"]
    assert limited.key == configs.LIMITED_KEY and limited.use_up == 1 and limited.nginx_path == "/static/429"
    assert limited.check(429, configs.STATIC_BODIES[429].encode()) is None


def test_parse_scenarios() -> None:
    assert run.parse_scenarios(None) == list(suite.SCENARIOS)
    assert run.parse_scenarios("soak,1") == ["chat", "latency", "soak"]  # in the suite's order
    assert run.parse_scenarios("8") == ["limits"]
    args = run._parse_args(["--limits-workers", "1,4", "--limits-warmup", "0", "--limits-duration", "1"])
    s = run._settings(args)
    assert (s.limits_workers, s.limits_warmup, s.limits_duration, s.limits_rpm) == ((1, 4), 0.0, 1.0, 10_000)
    with pytest.raises(ValueError, match="unknown scenario"):
        run.parse_scenarios("chat,nope")


# --- summaries, the bar and the report ----------------------------------------------------------------------


def _round(target: str, rps: float, cpu_s: float, requests: int | None = None, non_2xx: int = 0) -> Any:
    from bench.stack import Round
    from bench.wrk import WrkResult

    wrk = WrkResult(requests=requests if requests is not None else int(rps * 5), duration_s=5.0, rps=rps,
                    percentiles_ms={"50": 1.0, "99": 4.0}, non_2xx=non_2xx)
    return Round(target, 1, 5.0, cpu_s, 2.0, wrk, "", {"other_cpu_util": 0.1})


def test_summarise_case_counts_unexpected_answers() -> None:
    ok = suite.summarise_case(suite.CASES["chat"], [_round("gateway", 1000, 5.0), _round("nginx", 2000, 2.5)], 1)
    assert ok["ratios"]["rps"] == pytest.approx(0.5) and ok["ratios"]["req_per_cpu_s"] == pytest.approx(0.25)
    assert ok["ok"] is True and ok["targets"]["gateway"]["median_other_cpu_util"] == pytest.approx(0.1)
    # a 404 case: every answer is an error status, and only answers that are not count as errors
    rounds = [_round("gateway", 1000, 5.0, non_2xx=5000), _round("nginx", 2000, 2.5, non_2xx=9990)]
    nf = suite.summarise_case(suite.CASES["notfound"], rounds, 1)
    assert nf["targets"]["gateway"]["error_total"] == 0
    assert nf["targets"]["nginx"]["errors"]["not_an_error_status"] == 10 and nf["ok"] is False


def _results(**over: Any) -> dict[str, Any]:
    def case(name: str, g: float, n: float, ok: bool = True) -> dict[str, Any]:
        t = {"median_rps": g, "median_req_per_cpu_s": g, "median_server_cpu_util": 1.0, "p99_ms": 2.0,
             "error_total": 0}
        u = dict(t, median_rps=n, median_req_per_cpu_s=n)
        return {"name": name, "description": name, "baseline": "nginx proxy_pass", "path": "/v1/chat/completions",
                "nginx_path": "/v1/chat/completions", "targets": {"gateway": t, "nginx": u},
                "ratios": {"rps": g / n, "req_per_cpu_s": g / n}, "ok": ok}

    lat = {p: {"p50": 0.3, "p90": 0.5, "p99": 0.8, "p99.9": 1.5, "max": 2.0} for p in ("a",)}["a"]
    point = {"target": "gateway", "relative_to": "gateway", "fraction": 0.5, "offered_rps": 5000.0,
             "achieved_rps": 5000.0, "latency_ms": lat, "lag_ms": lat, "errors": 0, "caveat": ""}
    scenarios: dict[str, Any] = {
        "chat": {"number": "1", "status": "ok", "cases": [case("chat", 7000, 10000)]},
        "stream": {"number": "3", "status": "ok", "cases": [case("stream-20", 5000, 10000)]},
        "local": {"number": "4", "status": "ok", "cases": [case("notfound", 12000, 50000),
                                                          case("badkey", 9000, 50000),
                                                          case("ratelimited", 9500, 50000)],
                  "skipped": [{"what": "cache hit", "reason": "not yet"}]},
        "latency": {"number": "1", "status": "ok", "upstream": "x", "saturation_rps": {"gateway": 1e4},
                    "saturation_source": "chat", "points": [point, dict(point, target="nginx")],
                    "added_ms": {"0.5": {"offered_rps": 5000.0, "p50": 0.1, "p90": 0.2, "p99": 0.7,
                                         "p99.9": 1.1}}},
        "open-streams": {"number": "5", "status": "ok", "streams": 5000, "chunk_delay_ms": 1000,
                         "targets": {"gateway": {"requested": 5000, "open": 5000, "open_at_release": 5000,
                                                 "idle_rss_kb": 40000, "open_rss_kb": 120000, "kb_per_stream": 16.0,
                                                 "open_seconds": 9.0, "server_cpu_util_while_open": 0.2}}},
        "soak": {"number": "7", "status": "failed", "reason": "gateway died\nits log: ..."},
        "limits": {"number": "8", "status": "ok", "rpm": 10_000, "warmup_s": 30.0, "measured_s": 30.0,
                   "target_calls_per_request": 0.05, "ok": True,
                   "runs": [_limits_run(1, 30, 5000), _limits_run(8, 31, 625)]},
    }
    scenarios.update(over)
    return {"started": "2030-01-01 00:00:00", "quick": False, "scenarios": scenarios,
            "settings": {"server_cpus": [0], "load_cpus": [1], "rounds": 3, "duration": 5, "warmup": 2,
                         "threads": 1, "connections": 64},
            "machine": {"cpu_model": "Test CPU", "cpus_available": 2, "python": "3.11", "loadavg_at_start": [0.2, 0, 0],
                        "git": {"commit": "0123456789abcdef", "dirty": True}}}


def _limits_run(workers: int, calls: int, admitted: int) -> dict[str, Any]:
    return {"workers": workers, "rate_rps": 10_000 / 60 / workers, "admitted": admitted, "admitted_slow": calls,
            "calls": calls, "calls_per_request": calls / admitted, "gateway_calls_per_request": calls / admitted,
            "errors": 0, "leases": {"granted": calls, "median": admitted / calls, "fair_share": 166.7 / workers}}


def test_bar_evaluation() -> None:
    rows = {r["id"]: r for r in report.evaluate_bar(_results()["scenarios"])}
    assert rows["1"]["passed"] is True and rows["1"]["value"] == pytest.approx(0.7)
    assert rows["3"]["passed"] is False and rows["3"]["value"] == pytest.approx(0.5)
    # no-upstream answers are held against nginx *proxying* the chat (10,000), the worse of the two counts
    assert rows["4"]["passed"] is False and rows["4"]["value"] == pytest.approx(0.9)
    assert rows["latency"]["passed"] is True and rows["latency"]["value"] == pytest.approx(0.7)
    assert rows["5"]["passed"] is True and rows["5"]["value"] == pytest.approx(16.0)
    assert rows["7"]["passed"] is None and "gateway died" in rows["7"]["note"]
    assert "\n" not in rows["7"]["note"]
    # shared-state calls: the worst deployment decides
    assert rows["8"]["passed"] is True and rows["8"]["value"] == pytest.approx(31 / 625)
    assert rows["8"]["measured"] == "0.0060 (one worker); 0.0496 (one worker of 8)"

    broken = _results()
    broken["scenarios"]["chat"]["cases"][0]["ok"] = False  # errors: a figure, not a pass
    broken["scenarios"]["open-streams"]["targets"]["gateway"]["open_at_release"] = 4000
    del broken["scenarios"]["latency"]
    rows = {r["id"]: r for r in report.evaluate_bar(broken["scenarios"])}
    assert rows["1"]["passed"] is False and "errors" in rows["1"]["note"]
    assert rows["5"]["passed"] is False
    assert rows["latency"]["passed"] is None and "not selected" in rows["latency"]["note"]

    noisy = _results()  # a point that describes the load side or the machine: no verdict
    noisy["scenarios"]["latency"]["points"][1]["caveat"] = "generator late (send lag p99 > 1 ms)"
    rows = {r["id"]: r for r in report.evaluate_bar(noisy["scenarios"])}
    assert rows["latency"]["passed"] is None
    assert rows["latency"]["note"] == "not valid: nginx: generator late (send lag p99 > 1 ms)"

    small = _results()
    small["scenarios"]["open-streams"]["streams"] = 200  # a quick run: says nothing about 5,000
    small["scenarios"]["limits"]["warmup_s"] = 0.0  # the lease sizing had not learnt the rate yet
    rows = {r["id"]: r for r in report.evaluate_bar(small["scenarios"])}
    assert rows["5"]["passed"] is None and "only 200 streams" in rows["5"]["note"]
    assert rows["8"]["passed"] is None and "warm-up" in rows["8"]["note"]

    chatty = _results()
    chatty["scenarios"]["limits"]["runs"][1] = _limits_run(8, 40, 625)
    rows = {r["id"]: r for r in report.evaluate_bar(chatty["scenarios"])}
    assert rows["8"]["passed"] is False and rows["8"]["value"] == pytest.approx(0.064)


def test_render_markdown() -> None:
    results = _results()
    results["scenarios"]["latency"]["points"].append(
        {"target": "nginx", "relative_to": "nginx", "fraction": 0.8, "offered_rps": 30000.0,
         "skipped": "beyond the load CPUs: 150% of them predicted"})
    results["bar"] = report.evaluate_bar(results["scenarios"])
    md = report.render_markdown(results, ["throughput.png"])
    assert "| nginx | 80% of nginx | 30,000 |" in md and "skipped: beyond the load CPUs" in md
    assert md.startswith("# Benchmark report, 2030-01-01")
    assert "| 1. chat non-stream | ≥ 0.6x nginx proxy_pass throughput | 0.70x per core" in md
    assert "**FAIL**" in md and "not measured" in md
    assert "| 1. chat | proxy_pass | 7,000 | 10,000 | 0.70x |" in md
    assert "| 4. cache hit |" in md and "skipped: not yet" in md
    assert "| 4. ratelimited | proxy_pass | 9,500 | 50,000 |" in md
    assert "## Limits: shared-state calls per admitted request (scenario 8)" in md
    assert "| one worker of 8 | 20.8 | 625 | 31 | **0.0496** |" in md
    assert "| 50% of gateway saturation | 5,000 | +100 µs | +200 µs | +700 µs | +1.10 ms | ok |" in md
    assert "| gateway | 5,000 / 5,000 |" in md
    assert "![throughput](throughput.png)" in md
    assert "commit 0123456789 (uncommitted changes)" in md
    assert "Quick run" not in md and "The machine was shared" not in md
    results["quick"] = True
    assert "Quick run" in report.render_markdown(results)


def test_a_busy_machine_is_said_to_be_shared() -> None:
    results = _results()
    assert report.shared_machine_note(results) == ""
    results["scenarios"]["latency"]["points"][0]["other_cpu_util"] = 0.8
    results["scenarios"]["latency"]["points"][1]["other_cpu_util"] = 0.6
    assert report.other_load(results) == [0.8, 0.6]
    note = report.shared_machine_note(results)
    assert "The machine was shared" in note and "median 70% of a CPU" in note
    assert note in report.render_markdown(results)


def test_latency_caveat() -> None:
    good = {"offered_rps": 1000.0, "achieved_rps": 999.0, "load_cpu_util": 0.5, "lag_ms": {"p99": 0.2},
            "errors": 0}
    assert suite.latency_caveat(good) == ""
    bad = dict(good, achieved_rps=800.0, load_cpu_util=0.95, lag_ms={"p99": 3.0})
    assert suite.latency_caveat(bad) == ("load CPUs saturated; achieved < offered; generator late "
                                         "(send lag p99 > 1 ms)")


def test_plots_are_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = _results()
    results["scenarios"]["soak"] = {"status": "ok", "requests": 3000, "rss_warm_at_requests": 1000,
                                    "samples": [{"requests": n, "rss_kb": 30000 + n} for n in (0, 1000, 3000)]}
    made = report.make_plots(results, tmp_path)
    assert made == ["throughput.png", "latency.png", "soak.png"]
    for name in made:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the in-process limits measurement (scenario 8) ----------------------------------------------------------


def test_counting_source_counts_every_call_into_the_shared_state(tmp_path: Path) -> None:
    from gateway.limits.shared import Op
    from gateway.limits.shared_local import LocalLeaseSource

    async def calls() -> inproc.CountingSource:
        counting = inproc.CountingSource(LocalLeaseSource(tmp_path / "limits"))
        assert counting.lease_ttl == counting.inner.lease_ttl and counting.healthy
        ops = [Op("acquire", "k", 10.0, 100.0, 1.0, 8.0), Op("refund", "k", 10.0, 100.0, 1.0)]
        await counting.batch(ops, 0.0)
        await counting.keepalive()  # nothing in flight yet: the source does not touch the table
        assert await counting.enter("c", 5) and await counting.inflight("c") == 1
        await counting.leave("c")
        await counting.keepalive()
        assert await counting.ping()
        await counting.close()
        return counting

    counting = asyncio.run(calls())
    assert counting.calls == {"batch": 1, "budget": 0, "enter": 1, "leave": 1, "keepalive": 1, "inflight": 1,
                              "ping": 1}
    assert counting.total == 6 and counting.ops == {"acquire": 1, "refund": 1} and counting.granted == [8.0]


def test_inproc_limits_mode_reports_calls_per_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "limits.json"
    argv = ["--limits", "--rpm", "6000", "--workers", "2", "--warmup", "0.2", "--seconds", "0.5",
            "--json", str(out)]
    assert inproc.main(argv) == 0
    r = json.loads(out.read_text())
    assert (r["rpm"], r["workers"], r["rate_rps"]) == (6000, 2, 50.0)
    assert r["source"] == "LocalLeaseSource"  # the embedded shared state beside the SQLite store
    assert r["requests"] == 25 and r["admitted"] == 25 and r["errors"] == 0 and r["statuses"] == {"200": 25}
    assert r["calls"] >= 1 and r["calls_per_request"] == pytest.approx(r["calls"] / 25)
    assert r["calls_by_method"]["batch"] >= 1 and r["ops_by_kind"].get("acquire", 0) >= 1
    # the gateway's own metric counts the lease clients' round trips: never more than the boundary sees
    assert 0 <= r["gateway_shared_calls"] <= r["calls"]
    assert r["leases"]["fair_share"] == pytest.approx(50.0) and r["samples"]
    assert "shared-state calls per admitted request" in capsys.readouterr().out


@pytest.mark.parametrize("answer", inproc.ANSWERS)
def test_inproc_answers_without_an_upstream(answer: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--answer drives the suite's scenario-4 cases in process; every answer must have the case's status
    (the run fails otherwise), the rate-limited key's allowance used up first."""
    assert inproc.main(["--answer", answer, "-n", "300", "-c", "4", "--runs", "1"]) == 0
    assert "us CPU per request" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--answer", "teapot"], ["--answer", "notfound", "--auth"],
                                  ["--answer", "badkey", "--stream", "20"]])
def test_inproc_answer_refuses_what_it_cannot_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        inproc.main(argv)
    assert info.value.code == 2 and "--answer" in capsys.readouterr().err


# --- one quick run end to end -------------------------------------------------------------------------------

needs_tools = pytest.mark.skipif(
    not (shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)) or not shutil.which("wrk")
    or not shutil.which("taskset"),
    reason="needs nginx, wrk and taskset (apt-get install -y nginx wrk)",
)


@needs_tools
@pytest.mark.timeout(120)
def test_quick_run_of_the_no_upstream_and_limits_scenarios(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "bench.run", "--quick", "--scenarios", "local,limits", "--out", str(out),
            "--limits-duration", "0.5"]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its services and removes its temp dir
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        pytest.fail("the quick run did not finish within 90 s")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert "local: ok" in stderr and "limits: ok" in stderr  # the progress lines
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and list(results["scenarios"]) == ["local", "limits"]
    local = results["scenarios"]["local"]
    assert local["status"] == "ok"
    assert [c["name"] for c in local["cases"]] == ["notfound", "badkey", "ratelimited"]
    assert local["rate_limited_key"]["id"] == configs.LIMITED_KEY_ID
    for case in local["cases"]:
        assert case["ok"] is True and case["baseline"] == "nginx static return"
        for name, t in case["targets"].items():
            assert t["median_rps"] > 0 and t["median_req_per_cpu_s"] > 0, name
            (one,) = t["rounds"]
            assert one["requests"] > 0 and "Requests/sec" in one["wrk_output"]
    assert [s["what"] for s in local["skipped"]] == ["cache hit"]
    limits = results["scenarios"]["limits"]
    assert limits["status"] == "ok" and limits["ok"] is True and limits["rpm"] == 10_000
    assert [r["workers"] for r in limits["runs"]] == [1, 8]
    for r in limits["runs"]:
        assert r["admitted"] > 0 and r["errors"] == 0 and r["calls"] >= 1
        assert r["calls_per_request"] == pytest.approx(r["calls"] / r["admitted"])
    assert results["machine"]["git"] is not None and results["machine"]["cpus_available"] >= 1
    bar = {b["id"]: b for b in results["bar"]}
    assert bar["4"]["passed"] is None  # needs the chat scenario's nginx proxy_pass figure
    assert bar["8"]["passed"] is None and bar["8"]["value"] is not None  # no warm-up: not a result
    md = (out / "report.md").read_text()
    assert "## The bar" in md and "| 4. notfound | static return |" in md and "Quick run" in md
    assert "| 4. ratelimited | static return |" in md and "(scenario 8)" in md
    if results["plots"]:
        assert (out / "throughput.png").exists()


def test_routing_bench_runs_every_strategy_through_the_router(capsys: pytest.CaptureFixture[str]) -> None:
    assert routing.main(["-n", "200", "--runs", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["us_per_request"]) == set(routing.STRATEGIES)
    # each strategy's router really picks among its deployments and records: the loop is not empty
    for name in routing.STRATEGIES:
        router = routing.router_for(name)
        before = sum(d.stats.ok for d in router.deployments)
        routing._loop(router, 50)
        assert sum(d.stats.ok for d in router.deployments) == before + 50
