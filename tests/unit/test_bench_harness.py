"""The benchmark harness ``bench/proxy_vs_nginx.py``: that it works, never how fast anything is.

The end-to-end test runs ``python -m bench.proxy_vs_nginx --quick`` (skipped without nginx or wrk); the
others are pure tests of the wrk-output parser, the /proc CPU reader and the generated configs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # ``bench`` is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench import proxy_vs_nginx as harness  # noqa: E402

# --- the parser ---------------------------------------------------------------------------------------------

WRK_CLEAN = """\
Running 6s test @ http://127.0.0.1:8080/v1/chat/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.95ms    2.63ms  22.96ms   74.39%
    Req/Sec     9.14k   539.14     9.80k    60.00%
  Latency Distribution
     50%    6.33ms
     75%    8.20ms
     90%   10.14ms
     99%   14.86ms
  54839 requests in 6.01s, 40.38MB read
Requests/sec:   9124.63
Transfer/sec:      6.72MB
"""

WRK_ERRORS = """\
Running 1s test @ http://127.0.0.1:8081/v1/chat/completions
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.00us  101.50us   1.50s    98.00%
    Req/Sec    20.01k     1.20k   22.00k    70.00%
  Latency Distribution
     50%  790.00us
     75%  850.00us
     90%    1.02ms
     99%    1.20s
  40020 requests in 1.00m, 12.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 17
Requests/sec:  40011.50
Transfer/sec:     11.99MB
"""


def test_parse_clean_report() -> None:
    r = harness.parse_wrk_output(WRK_CLEAN)
    assert r.requests == 54839
    assert r.duration_s == pytest.approx(6.01)
    assert r.rps == pytest.approx(9124.63)
    assert r.latency_avg_ms == pytest.approx(6.95)
    assert r.percentiles_ms == pytest.approx({"50": 6.33, "75": 8.20, "90": 10.14, "99": 14.86})
    assert r.non_2xx == 0
    assert r.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert r.errors == 0


def test_parse_errors_and_units() -> None:
    r = harness.parse_wrk_output(WRK_ERRORS)
    assert r.requests == 40020
    assert r.duration_s == pytest.approx(60.0)
    assert r.rps == pytest.approx(40011.5)
    assert r.latency_avg_ms == pytest.approx(0.812)
    assert r.percentiles_ms == pytest.approx({"50": 0.79, "75": 0.85, "90": 1.02, "99": 1200.0})
    assert r.non_2xx == 17
    assert r.socket_errors == {"connect": 1, "read": 2, "write": 3, "timeout": 4}
    assert r.errors == 17 + 1 + 2 + 3 + 4


def test_parse_without_latency_distribution() -> None:
    cut = WRK_CLEAN[WRK_CLEAN.index("  Latency Distribution"):WRK_CLEAN.index("  54839")]
    text = WRK_CLEAN.replace(cut, "")
    r = harness.parse_wrk_output(text)
    assert r.percentiles_ms == {}
    assert r.rps == pytest.approx(9124.63)


def test_parse_rejects_what_is_not_a_report() -> None:
    with pytest.raises(ValueError, match="not a wrk report"):
        harness.parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


# --- /proc --------------------------------------------------------------------------------------------------


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


def test_read_proc_cpu_matches_os_times() -> None:
    _burn(0.2)
    before = harness.read_proc_cpu(os.getpid())
    _burn(0.3)
    after = harness.read_proc_cpu(os.getpid())
    t = os.times()
    assert before.ppid == os.getppid()
    assert after.own - before.own == pytest.approx(0.3, abs=0.1)
    # the same kernel accounting as times(2), in clock ticks
    assert after.own == pytest.approx(t.user + t.system, abs=0.1)
    assert after.cutime >= 0 and after.cstime >= 0


def test_read_proc_cpu_of_a_missing_process() -> None:
    with pytest.raises(FileNotFoundError):
        harness.read_proc_cpu(2**22 + 12345)  # above the kernel's pid_max limit


def test_process_tree_and_its_cpu_include_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while harness.read_proc_cpu(child.pid).own < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = harness.process_tree(os.getpid())
        assert tree[0] == os.getpid()
        assert child.pid in tree
        assert harness.process_tree(child.pid) == [child.pid]
        own = harness.read_proc_cpu(os.getpid()).total
        assert harness.tree_cpu_seconds(os.getpid()) >= own + 0.25
    finally:
        child.kill()
        child.wait()


def test_parse_cpu_list() -> None:
    assert harness.parse_cpu_list("0") == [0]
    assert harness.parse_cpu_list("1-3") == [1, 2, 3]
    assert harness.parse_cpu_list("0, 2-3,2") == [0, 2, 3]
    for bad in ("", "a", "3-1", "1-", "-1"):
        with pytest.raises(ValueError):
            harness.parse_cpu_list(bad)


# --- generated configs and scenarios ------------------------------------------------------------------------


def test_gateway_toml_is_a_valid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_config_text

    monkeypatch.setenv("BENCH_KEY", harness.BENCH_KEY)
    config = load_config_text(harness.gateway_toml(18080, 19000), "bench.toml")
    assert config.server.workers == 1
    assert config.log.call_records is False
    (provider,) = config.providers.values()
    assert provider.type == "openai"
    assert provider.base_url == "http://127.0.0.1:19000/v1"
    assert provider.api_key == "env:BENCH_KEY"
    # the model keeps the upstream's name: the gateway forwards the client's bytes, as nginx does
    model = config.models[harness.MODEL]
    assert model.upstream_model in (None, harness.MODEL)


def test_nginx_conf_has_the_proxy_settings(tmp_path: Path) -> None:
    conf = harness.nginx_conf(tmp_path, 18081, 19000)
    for directive in ("worker_processes 1;", "daemon off;", "access_log off;", f"pid {tmp_path}/nginx.pid;",
                      f"error_log {tmp_path}/", "keepalive 256;", "proxy_http_version 1.1;",
                      'proxy_set_header Connection "";', "proxy_buffering off;",
                      "listen 127.0.0.1:18081;", "server 127.0.0.1:19000;"):
        assert directive in conf


@pytest.mark.parametrize("name", sorted(harness.SCENARIOS))
def test_scenario_bodies_need_no_rewrite(name: str) -> None:
    scenario = harness.SCENARIOS[name]
    body = json.loads(scenario.body)
    assert body["model"] == harness.MODEL
    if body.get("stream"):
        # else the gateway adds stream_options and the mock would see other bytes than through nginx
        assert body["stream_options"] == {"include_usage": True}
    assert scenario.check(500, b"") is not None


# --- the summary -------------------------------------------------------------------------------------------


def _round(target: str, index: int, rps: float, cpu_s: float, p99: float, non_2xx: int = 0) -> harness.Round:
    wrk = harness.WrkResult(requests=int(rps * 6), duration_s=6.0, rps=rps,
                            percentiles_ms={"50": p99 / 4, "99": p99}, non_2xx=non_2xx)
    return harness.Round(target, index, wall_s=6.0, server_cpu_s=cpu_s, load_cpu_s=3.0, wrk=wrk,
                         wrk_output="")


def test_summary_medians_ratios_and_errors(tmp_path: Path) -> None:
    bench = harness.Bench(harness._parse_args(["--rounds", "3"]), tmp_path, {})
    rounds = [
        _round("gateway", 1, 1000, 6.0, 4.0), _round("nginx", 1, 2000, 3.0, 2.0),
        _round("nginx", 2, 2200, 3.0, 3.0), _round("gateway", 2, 1200, 6.0, 5.0),
        _round("gateway", 3, 1100, 3.0, 6.0), _round("nginx", 3, 1800, 2.0, 1.0),
    ]
    result = bench.summarise(["gateway", "nginx"], rounds)
    g, n = result["targets"]["gateway"], result["targets"]["nginx"]
    assert g["median_rps"] == 1100 and n["median_rps"] == 2000
    assert g["median_req_per_cpu_s"] == pytest.approx(1200)  # of 1000, 1200 and 2200 requests per CPU-s
    assert n["median_req_per_cpu_s"] == pytest.approx(4400)  # of 4000, 4400 and 5400
    assert g["p99_ms"] == 5.0 and n["p99_ms"] == 2.0
    assert g["median_server_cpu_util"] == pytest.approx(1.0)
    assert [r["round"] for r in g["rounds"]] == [1, 2, 3]
    ratios = result["ratios"]["gateway_over_nginx"]
    assert ratios["rps"] == pytest.approx(0.55)
    assert ratios["req_per_cpu_s"] == pytest.approx(1200 / 4400)
    assert result["ok"] is True
    assert "gateway/nginx: req/s 0.55x   req/CPU-s 0.27x" in harness.format_table(result)

    rounds.append(_round("nginx", 4, 2000, 3.0, 2.0, non_2xx=5))
    broken = bench.summarise(["gateway", "nginx"], rounds)
    assert broken["ok"] is False
    assert broken["targets"]["nginx"]["errors"]["non_2xx"] == 5
    assert "ERRORS" in harness.format_table(broken)


# --- the harness end to end ---------------------------------------------------------------------------------

needs_tools = pytest.mark.skipif(
    not (shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)) or not shutil.which("wrk"),
    reason="needs nginx and wrk (apt-get install -y nginx wrk)",
)


@needs_tools
@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", ["chat", "stream"])
def test_quick_run_measures_both_targets(tmp_path: Path, scenario: str) -> None:
    out = tmp_path / "result.json"
    # a generous wrk timeout: this checks the harness, and a slow CI machine must not count as errors
    argv = [sys.executable, "-m", "bench.proxy_vs_nginx", "--quick", "--scenario", scenario,
            "--timeout", "10", "--json", str(out)]
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
        pytest.fail("the quick benchmark did not finish within 90 s")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert result["scenario"]["name"] == scenario
    assert set(result["targets"]) == {"gateway", "nginx"}
    for name, target in result["targets"].items():
        assert target["median_rps"] > 0, name
        assert target["median_req_per_cpu_s"] > 0, name
        assert target["error_total"] == 0, name
        (one,) = target["rounds"]
        assert one["requests"] > 0 and one["server_cpu_s"] > 0, name
    ratios = result["ratios"]["gateway_over_nginx"]
    assert ratios["rps"] > 0 and ratios["req_per_cpu_s"] > 0
    assert "gateway/nginx" in stdout
