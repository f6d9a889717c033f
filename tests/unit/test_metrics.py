"""The Prometheus export: worker snapshots written, read and summed; the rendering; the endpoint; config.

Everything runs in process: several exporters on one directory stand for the workers of a node, and the
liveness of their pids is injected where it matters.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import errors
from gateway._core.http import Request
from gateway.auth import digest
from gateway.config import ConfigError, default_config, load_config, load_config_text
from gateway.engine import Engine
from gateway.limits.reserve import BudgetStats
from gateway.limits.shared import LeaseStats
from gateway.limits.stats import LimitStats
from gateway.observe import metrics
from gateway.observe.metrics import (
    CONTENT_TYPE,
    ENV_METRICS_DIR,
    METRICS,
    MetricsExporter,
    NodeDir,
    Snapshot,
    aggregate,
    engine_samples,
    render,
)
from gateway.routing.config import BreakerConfig, DeploymentConfig, RetryConfig, RoutingConfig
from gateway.routing.outcome import Outcome
from gateway.routing.router import RequestInfo, build_routers
from gateway.routing.stats import deployment_stats

DOCS = Path(__file__).resolve().parents[2] / "docs"
TOKEN = "scrape-token-for-tests"


def config(extra: str = "") -> Any:
    return load_config_text(
        '[providers.mock]\ntype = "mock"\n[models.m]\nprovider = "mock"\n[log]\ncall_records = false\n' + extra
    )


def families(text: bytes) -> dict[str, Any]:
    """Parsed exposition: family name (``_total`` dropped by the parser for counters) -> family."""
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def value(text: bytes, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def fixed(counters: list[metrics.Sample], gauges: list[metrics.Sample] | None = None) -> Any:
    return lambda: (list(counters), list(gauges or []))


def snap(pid: int, written: float, counters: list[metrics.Sample], gauges: list[metrics.Sample] | None = None,
         interval: float = 1.0) -> Snapshot:
    return Snapshot(pid, 0, written, interval, counters, gauges or [])


def request(method: str = "GET", path: str = "/metrics", headers: list[tuple[bytes, bytes]] | None = None
            ) -> Request:
    return Request(method, path, "", 11, [(b"host", b"t"), *(headers or [])], b"", True)


# -- sums ------------------------------------------------------------------------------------------------


def test_counters_sum_over_every_snapshot_gauges_over_live_ones() -> None:
    now = 1000.0
    snaps = [
        snap(1, now - 0.5, [("gateway_limits_admitted_total", (), 3.0),
                            ("gateway_limits_refused_total", ("requests",), 2.0)],
             [("gateway_limits_degraded_workers", (), 1.0)]),
        snap(2, now - 0.2, [("gateway_limits_admitted_total", (), 4.0)],
             [("gateway_limits_degraded_workers", (), 0.0)]),
        # exited: its counters stay in the sums (monotonic), its gauge does not count
        snap(3, now - 30.0, [("gateway_limits_admitted_total", (), 10.0),
                             ("gateway_limits_refused_total", ("requests",), 1.0)],
             [("gateway_limits_degraded_workers", (), 1.0)]),
        # alive but not written for 5 intervals: stale, the same treatment
        snap(4, now - 6.0, [("gateway_limits_admitted_total", (), 1.0)],
             [("gateway_limits_degraded_workers", (), 1.0)]),
    ]
    totals = aggregate(snaps, now, alive=lambda pid: pid != 3)
    assert totals[("gateway_limits_admitted_total", ())] == 18.0
    assert totals[("gateway_limits_refused_total", ("requests",))] == 3.0
    assert totals[("gateway_limits_degraded_workers", ())] == 1.0
    assert totals[("gateway_metrics_workers", ("live",))] == 2.0
    assert totals[("gateway_metrics_workers", ("stale",))] == 1.0
    assert totals[("gateway_metrics_workers", ("exited",))] == 1.0


def test_staleness_follows_the_writers_interval() -> None:
    gauge = [("gateway_limits_degraded_workers", (), 1.0)]
    slow = snap(1, 100.0 - 20.0, [], gauge, interval=5.0)  # 20 s old, written every 5 s: live
    totals = aggregate([slow], 100.0, alive=lambda pid: True)
    assert totals[("gateway_limits_degraded_workers", ())] == 1.0


def test_an_exited_worker_keeps_the_sum_monotonic(tmp_path: Path) -> None:
    counters = [("gateway_limits_admitted_total", (), 5.0)]
    first = MetricsExporter(config(), fixed(counters), worker=0, directory=str(tmp_path))
    first.write()
    # the respawned worker: a new exporter, a new file, counting from zero
    second = MetricsExporter(config(), fixed([("gateway_limits_admitted_total", (), 1.0)]), worker=0,
                             directory=str(tmp_path))
    assert value(second.scrape(), "gateway_limits_admitted_total") == 6.0
    assert len(list(tmp_path.glob("snapshot-*.json"))) == 2


# -- files -----------------------------------------------------------------------------------------------


def test_a_snapshot_is_written_whole_and_read_back(tmp_path: Path) -> None:
    exp = MetricsExporter(config(), fixed([("gateway_spend_usd_total", (), 0.25)],
                                          [("gateway_limits_degraded_workers", (), 0.0)]),
                          worker=3, directory=str(tmp_path))
    written = exp.write()
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("snapshot-") and files[0].endswith(".json")  # no temp left
    back = msgspec.json.decode((tmp_path / files[0]).read_bytes(), type=Snapshot)
    assert back == written
    assert back.pid == os.getpid() and back.worker == 3 and back.interval == 1.0
    assert back.counters == [("gateway_spend_usd_total", (), 0.25)]


def test_scrape_sums_the_other_workers_files(tmp_path: Path) -> None:
    a = MetricsExporter(config(), fixed([("gateway_limits_admitted_total", (), 2.0)]), worker=0,
                        directory=str(tmp_path))
    b = MetricsExporter(config(), fixed([("gateway_limits_admitted_total", (), 3.0),
                                         ("gateway_limits_refused_total", ("tokens",), 1.0)]), worker=1,
                        directory=str(tmp_path))
    b.write()
    out = a.scrape()
    assert value(out, "gateway_limits_admitted_total") == 5.0
    assert value(out, "gateway_limits_refused_total", dimension="tokens") == 1.0
    assert value(out, "gateway_metrics_workers", state="live") == 2.0  # same pid here: both alive


def test_broken_and_foreign_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "snapshot-1-deadbeef.json").write_bytes(b"{not json")
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / ".snapshot-2-cafe.json.tmp").write_bytes(b"{")
    exp = MetricsExporter(config(), fixed([("gateway_limits_admitted_total", (), 1.0)]), worker=0,
                          directory=str(tmp_path))
    out = exp.scrape()
    assert value(out, "gateway_limits_admitted_total") == 1.0
    assert value(out, "gateway_metrics_workers", state="live") == 1.0


def test_without_a_directory_a_worker_reports_itself(tmp_path: Path) -> None:
    exp = MetricsExporter(config(), fixed([("gateway_limits_admitted_total", (), 7.0)]), worker=0,
                          directory=None)
    assert value(exp.scrape(), "gateway_limits_admitted_total") == 7.0


def test_the_timer_rewrites_the_snapshot_and_stop_writes_a_last_one(tmp_path: Path) -> None:
    count = {"n": 0.0}

    def samples() -> tuple[list[metrics.Sample], list[metrics.Sample]]:
        count["n"] += 1
        return [("gateway_limits_admitted_total", (), count["n"])], []

    exp = MetricsExporter(config("[metrics]\ninterval = 0.02\n"), samples, worker=0, directory=str(tmp_path))

    def read() -> float:
        (path,) = tmp_path.glob("snapshot-*.json")
        return msgspec.json.decode(path.read_bytes(), type=Snapshot).counters[0][2]

    async def until(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30.0
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    # "nothing more is written" is checked by sleeping 5 intervals: a timer still armed (due within one
    # interval, 0.02 s) would run on the loop before that sleep returns, however slow the machine
    async def go() -> None:
        exp.start()
        await until(lambda: read() >= 3, "the snapshot to be rewritten several times")
        exp.reload(config("[metrics]\nenabled = false\n"))  # disabled: the timer stops
        stopped = read()
        await asyncio.sleep(0.1)
        assert read() == stopped
        assert exp.path == ""
        exp.reload(config("[metrics]\ninterval = 0.02\n"))
        await until(lambda: read() > stopped, "the re-enabled timer to write again")
        exp.stop()
        last = read()
        await asyncio.sleep(0.1)
        assert read() == last == count["n"]  # stop wrote the last figures, then nothing more

    asyncio.run(go())


def test_node_dir_fresh_and_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_METRICS_DIR, raising=False)
    fresh = NodeDir.open(config().metrics)
    assert fresh.created and os.path.isdir(fresh.path) and os.environ[ENV_METRICS_DIR] == fresh.path
    Path(fresh.path, "snapshot-1-aa.json").write_text("{}")
    fresh.close()
    assert not os.path.exists(fresh.path) and ENV_METRICS_DIR not in os.environ

    # a configured directory: made if missing, emptied of snapshots (and only of snapshots), kept at exit
    where = tmp_path / "node" / "metrics"
    where.mkdir(parents=True)
    (where / "snapshot-9-bb.json").write_text("{}")
    (where / ".snapshot-9-bb.json.tmp").write_text("{")
    (where / "keep.txt").write_text("mine")
    node = NodeDir.open(config(f'[metrics]\ndir = "{where}"\n').metrics)
    assert not node.created and node.path == str(where)
    assert sorted(os.listdir(where)) == ["keep.txt"]
    node.close()
    assert where.is_dir()


def test_node_dir_removes_fresh_dirs_of_killed_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_METRICS_DIR, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs (reaped)
    orphan = tmp_path / f"gateway-metrics-{dead.pid}-x1"
    orphan.mkdir()
    (orphan / "snapshot-1-aa.json").write_text("{}")
    alive = tmp_path / f"gateway-metrics-{os.getpid()}-x2"  # a running node's: kept
    alive.mkdir()
    other = tmp_path / "gateway-metrics-notapid"  # not one of ours by name: kept
    other.mkdir()
    node = NodeDir.open(config().metrics)
    try:
        assert not orphan.exists() and alive.is_dir() and other.is_dir()
        assert os.path.basename(node.path).startswith(f"gateway-metrics-{os.getpid()}-")
    finally:
        node.close()


# -- rendering -------------------------------------------------------------------------------------------


def test_render_is_valid_exposition_with_types_and_help() -> None:
    totals = aggregate([snap(os.getpid(), 0.0, [
        ("gateway_limits_admitted_total", (), 4.0),
        ("gateway_routing_attempts_total", ("gpt", "east", "ok"), 2.0),
        ("gateway_routing_attempts_total", ("gpt", "east", "5xx"), 1.0),
    ], [("gateway_routing_breaker_state", ("gpt", "east", "open"), 1.0)])], now=0.0)
    text = render(totals)
    fams = families(text)
    assert fams["gateway_limits_admitted"].type == "counter"
    assert fams["gateway_routing_breaker_state"].type == "gauge"
    assert fams["gateway_limits_admitted"].documentation.startswith("Requests admitted")
    assert value(text, "gateway_limits_admitted_total") == 4.0
    assert value(text, "gateway_routing_attempts_total", model="gpt", deployment="east", outcome="5xx") == 1.0
    assert value(text, "gateway_routing_breaker_state", model="gpt", deployment="east", state="open") == 1.0
    # an unlabelled metric nobody reported is there at zero; every metric has its HELP and TYPE
    assert value(text, "gateway_budget_blocked_total") == 0.0
    for m in METRICS:
        assert f"# TYPE {m.name} {m.kind}".encode() in text, m.name
    assert b"_created" not in text


def test_metric_names_follow_the_conventions() -> None:
    for m in METRICS:
        assert m.name.startswith(("gateway_", "gen_ai_"))  # gen_ai_: the OpenTelemetry GenAI names
        assert m.name.endswith("_total") == (m.kind == "counter")
        assert m.help.endswith(".")


def test_the_docs_list_every_metric() -> None:
    text = (DOCS / "metrics.md").read_text()
    for m in METRICS:
        assert f"`{m.name}`" in text, m.name


# -- what a worker reports -------------------------------------------------------------------------------


class _Client:
    def __init__(self, degraded: bool = False) -> None:
        self.stats = LeaseStats()
        self.degraded = degraded


class _Budgets:
    def __init__(self) -> None:
        self.stats = BudgetStats()
        self.degraded = False


class _Limits:
    def __init__(self) -> None:
        self.stats = LimitStats()
        self.client = _Client()
        self.tokens = _Client(degraded=True)
        self.budgets = _Budgets()


class _Engine:
    def __init__(self, limits: Any = None, runtime: Any = None) -> None:
        self.limits = limits
        self.runtime = runtime
        self.worker = 0


def test_engine_samples_read_the_limit_counters() -> None:
    lim = _Limits()
    st = lim.stats
    st.admitted, st.admitted_slow, st.refused_requests, st.refused_tokens, st.refused_concurrency = 9, 2, 3, 4, 5
    st.unavailable, st.budget_blocked, st.downgraded, st.alerts, st.alerts_failed = 6, 7, 8, 1, 1
    st.tokens_charged, st.tokens_refunded, st.spend_usd, st.spend_flushes = 12.0, 30.0, 0.5, 2
    lim.client.stats.source_calls, lim.client.stats.source_ops, lim.client.stats.grants = 10, 20, 8
    lim.tokens.stats.degraded_transitions = 1
    lim.budgets.stats.local, lim.budgets.stats.asks, lim.budgets.stats.source_calls = 40, 3, 3
    counters, gauges = engine_samples(_Engine(lim))
    c = {(n, labels): v for n, labels, v in counters}
    assert c[("gateway_limits_admitted_total", ())] == 9
    assert c[("gateway_limits_waited_total", ())] == 2
    assert c[("gateway_limits_refused_total", ("requests",))] == 3
    assert c[("gateway_limits_refused_total", ("tokens",))] == 4
    assert c[("gateway_limits_refused_total", ("concurrency",))] == 5
    assert c[("gateway_limits_unavailable_total", ())] == 6
    assert c[("gateway_budget_blocked_total", ())] == 7
    assert c[("gateway_budget_downgraded_total", ())] == 8
    assert c[("gateway_budget_alert_webhook_failures_total", ())] == 1
    assert c[("gateway_limits_tokens_charged_total", ())] == 12.0
    assert c[("gateway_limits_tokens_refunded_total", ())] == 30.0
    assert c[("gateway_spend_usd_total", ())] == 0.5
    assert c[("gateway_shared_state_calls_total", ("requests",))] == 10
    assert c[("gateway_shared_state_ops_total", ("requests",))] == 20
    assert c[("gateway_shared_state_calls_total", ("budgets",))] == 3
    assert c[("gateway_limits_lease_grants_total", ("requests",))] == 8
    assert c[("gateway_limits_degraded_total", ("tokens",))] == 1
    assert c[("gateway_budget_reservations_total", ("hold",))] == 40
    assert c[("gateway_budget_reservations_total", ("shared_state",))] == 3
    assert gauges == [("gateway_limits_degraded_workers", (), 1.0)]  # the token client is degraded


def test_engine_samples_without_limits_are_zeros() -> None:
    counters, gauges = engine_samples(_Engine())
    limit_counters = [v for n, _, v in counters if not n.startswith("gateway_routing_")]
    assert limit_counters and not any(limit_counters)
    assert gauges == [("gateway_limits_degraded_workers", (), 0.0)]


def test_routing_counters_survive_a_reload_and_count_failovers_and_opens() -> None:
    one_try = RetryConfig(max_attempts=2)
    cfg = {
        "metrics-a": RoutingConfig(
            deployments=[DeploymentConfig(provider="p1", name="east"), DeploymentConfig(provider="p2", name="west")],
            retry=one_try, fallbacks=["metrics-b"], breaker=BreakerConfig(consecutive_failures=1, open_for=60.0),
        ),
        "metrics-b": RoutingConfig(deployments=[DeploymentConfig(provider="p3", name="only")]),
    }
    routers = build_routers(cfg)
    attempts = routers["metrics-a"].plan(RequestInfo(), 0.0, lambda: 0.0)
    tried = []
    for a in attempts:  # both deployments of a fail (a retry), then the fallback answers
        tried.append((a.model, a.deployment.name))
        attempts.report(Outcome.OK if a.model == "metrics-b" else Outcome.SERVER_ERROR, 0.0)
    assert [m for m, _ in tried] == ["metrics-a", "metrics-a", "metrics-b"]
    second = tried[1][1]
    again = build_routers(cfg, previous=routers)  # a reload: new routers, new Deployment objects
    dep = again["metrics-a"].by_name[second]
    assert dep.stats is deployment_stats("metrics-a", second)
    assert dep.stats.retries == 1 and dep.stats.outcomes == {"5xx": 1} and dep.stats.breaker_opens == 1
    only = deployment_stats("metrics-b", "only")
    assert only.fallbacks == 1 and only.ok == 1

    class Entry:
        target = None

    class Runtime:
        routers = again
        models = {"metrics-a": Entry(), "metrics-b": Entry()}

    counters, gauges = engine_samples(_Engine(runtime=Runtime()))
    c = {(n, labels): v for n, labels, v in counters}
    g = {(n, labels): v for n, labels, v in gauges}
    assert c[("gateway_routing_failovers_total", ("metrics-a", second, "retry"))] == 1
    assert c[("gateway_routing_failovers_total", ("metrics-b", "only", "fallback"))] == 1
    assert c[("gateway_routing_attempts_total", ("metrics-b", "only", "ok"))] == 1
    assert c[("gateway_routing_attempts_total", ("metrics-a", second, "5xx"))] == 1
    assert c[("gateway_routing_breaker_opens_total", ("metrics-a", second))] == 1
    # the reloaded router inherited the open breaker
    assert g[("gateway_routing_breaker_state", ("metrics-a", second, "open"))] == 1.0
    assert g[("gateway_routing_breaker_state", ("metrics-a", second, "closed"))] == 0.0
    assert g[("gateway_routing_breaker_state", ("metrics-b", "only", "closed"))] == 1.0


# -- the endpoint ----------------------------------------------------------------------------------------


def test_answer_get_only_with_the_content_type() -> None:
    exp = MetricsExporter(config(), fixed([]), worker=0, directory=None)
    reply = exp.answer(request())
    assert reply.status == 200 and ("content-type", CONTENT_TYPE) in reply.headers
    with pytest.raises(errors.MethodNotAllowed) as info:
        exp.answer(request("POST"))
    assert ("allow", "GET") in info.value.headers


@pytest.mark.parametrize("header, code", [
    (None, "missing_token"),
    (b"Basic abc", "missing_token"),
    (b"Bearer wrong", "invalid_token"),
])
def test_the_token_is_required_when_configured(header: bytes | None, code: str) -> None:
    exp = MetricsExporter(config(f'[metrics]\ntoken = "{digest(TOKEN, b"")}"\n'), fixed([]), worker=0,
                          directory=None)
    hdrs = [(b"authorization", header)] if header is not None else []
    with pytest.raises(errors.Unauthorized) as info:
        exp.answer(request(headers=hdrs))
    assert info.value.code == code
    assert json.loads(info.value.to_body())["error"]["type"] == "authentication_error"
    assert exp.answer(request(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])).status == 200
    assert exp.answer(request(headers=[(b"authorization", f"bearer  {TOKEN} ".encode())])).status == 200


def test_a_peppered_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_METRICS_PEPPER", "pepper!")
    text = f'[auth]\npepper = "env:GW_TEST_METRICS_PEPPER"\n[metrics]\ntoken = "{digest(TOKEN, b"pepper!")}"\n'
    exp = MetricsExporter(config(text), fixed([]), worker=0, directory=None)
    assert exp.answer(request(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])).status == 200


def test_the_engine_serves_the_path_and_reloads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_METRICS_DIR, raising=False)
    out: list[tuple[int, bytes]] = []

    class Rec:
        started = finished = False
        keep_alive = True
        disconnected = False

        def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.started = self.finished = True
            out.append((status, body))

    async def get(engine: Engine, path: str, method: str = "GET") -> tuple[int, bytes]:
        await engine.handle(request(method, path), Rec())  # type: ignore[arg-type]
        return out[-1]

    async def go() -> None:
        engine = Engine(config())
        await engine.startup()
        try:
            status, body = await get(engine, "/metrics")
            assert status == 200 and b"# TYPE gateway_limits_admitted_total counter" in body
            assert (await get(engine, "/metrics", "POST"))[0] == 405
            engine.reload(config('[metrics]\npath = "/internal/metrics"\n'))
            assert (await get(engine, "/metrics"))[0] == 404
            assert (await get(engine, "/internal/metrics"))[0] == 200
            engine.reload(config("[metrics]\nenabled = false\n"))
            assert (await get(engine, "/metrics"))[0] == 404
        finally:
            await engine.shutdown()

    asyncio.run(go())


# -- configuration ---------------------------------------------------------------------------------------


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gateway.toml")
    return info.value.errors


def test_metrics_defaults() -> None:
    m = default_config().metrics
    assert (m.enabled, m.path, m.token, m.interval, m.dir) == (True, "/metrics", None, 1.0, None)


@pytest.mark.parametrize("body, message", [
    ('path = "metrics"', 'gateway.toml:2: metrics.path: must start with "/", found "metrics"'),
    ('path = "/m?x=1"', "gateway.toml:2: metrics.path: must be a plain path"),
    ('path = "/healthz"', "gateway.toml:2: metrics.path: /healthz is served by the gateway already"),
    ('path = "/v1/metrics"', "gateway.toml:2: metrics.path: /v1/metrics is served by the gateway already"),
    ('token = "s3cret"', "gateway.toml:2: metrics.token: a key digest must start with one of"),
    ('token = "hmac-sha256:' + "0" * 64 + '"', "gateway.toml:2: metrics.token: an hmac-sha256 digest needs"),
    ("interval = 0", "gateway.toml:2: metrics.interval: must be a finite number of seconds above 0, found 0"),
    ('dir = ""', "gateway.toml:2: metrics.dir: must not be empty"),
    ("enabled = 1", "gateway.toml:2: metrics.enabled:"),
    ("scrape = true", "gateway.toml:2: metrics.scrape:"),
])
def test_metrics_errors(body: str, message: str) -> None:
    errs = errors_of(f"[metrics]\n{body}\n")
    assert len(errs) == 1 and errs[0].startswith(message), errs


def test_a_relative_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[metrics]\ndir = "run/metrics"\n')
    assert load_config(path).metrics.dir == str(tmp_path / "run" / "metrics")
