"""Operations, through real processes: ``gateway --version``, the startup warning when the compiled core is
not in use, and ``/readyz`` turning 503 on SIGTERM while the worker still serves (``[server] drain_delay``),
so that a load balancer probing it stops sending before connections are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import redisproc

from gateway._core import compiled

from .conftest import MOCK_KEY, StartGateway
from .helpers import (
    STARTUP_TIMEOUT,
    RawClient,
    ServerProcess,
    assert_openai_error,
    assert_serves,
    chat_request,
    children_of,
    free_port,
    gateway_toml,
    http_request,
    http_status,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]

WARNING = "THE COMPILED CORE IS NOT IN USE"


def run_gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


# -- gateway --version ----------------------------------------------------------------------------------


def test_version_names_the_release_and_whether_the_core_is_compiled() -> None:
    result = run_gateway("--version")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"llm-gateway {version('llm-gateway')}, core "), line
    missing = sorted(name for name, is_compiled in compiled().items() if not is_compiled)
    if missing:
        assert "NOT compiled" in line and all(name in line for name in missing), line
    else:
        assert ", core compiled," in line, line


def test_version_says_so_when_the_pure_python_twins_run() -> None:
    result = run_gateway("--version", env={"GATEWAY_NO_EXTENSIONS": "1"})
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert "core NOT compiled (pure Python: " in line, line
    for name in ("http", "limit", "route", "sse", "engine", "listener", "pool", "openai"):
        assert name in line, line


# -- the startup warning ---------------------------------------------------------------------------------


def start_serve(tmp_path: Path, name: str, config_text: str, env: dict[str, str]) -> ServerProcess:
    config = tmp_path / f"{name}.toml"
    config.write_text(config_text)
    port = free_port()
    args = ["serve", "--config", str(config), "--workers", "1", "--host", "127.0.0.1", "--port", str(port)]
    proc = ServerProcess(name, args, tmp_path, port, env={"MOCK_KEY": MOCK_KEY, **env}).start()
    try:
        proc.wait_ready("/readyz")
    except BaseException:
        proc.stop()
        raise
    return proc


def test_serve_warns_loudly_when_the_compiled_core_is_not_in_use(tmp_path: Path, mock_port: int) -> None:
    proc = start_serve(tmp_path, "gateway-twins", gateway_toml(mock_port), {"GATEWAY_NO_EXTENSIONS": "1"})
    try:
        assert_serves(proc.port)
        warnings = [ln for ln in proc.logs(records=False).splitlines() if WARNING in ln]
        assert len(warnings) == 1, proc.logs()
        assert " WARNING gateway.cli" in warnings[0], warnings
        for name in ("http", "engine", "listener", "pool"):
            assert name in warnings[0], warnings
    finally:
        proc.stop()


def test_serve_is_quiet_about_a_compiled_core(tmp_path: Path, mock_port: int) -> None:
    missing = [name for name, is_compiled in compiled().items() if not is_compiled]
    proc = start_serve(tmp_path, "gateway-core", gateway_toml(mock_port), {})
    try:
        assert_serves(proc.port)
        # the environment of the tests decides; CI builds the core and requires it
        assert (WARNING in proc.logs(records=False)) == bool(missing), missing
    finally:
        proc.stop()


# -- the default worker count ----------------------------------------------------------------------------

PINNED = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
          "from gateway.cli import main; sys.exit(main(sys.argv[1:]))")


def test_workers_default_to_the_cpus_the_process_may_use(tmp_path: Path, mock_port: int) -> None:
    """Pinned to one CPU of several, ``gateway serve`` without --workers starts one worker, not one per
    core of the machine (the cgroup quota takes the same path: tests/unit/test_cpus.py)."""
    config = tmp_path / "pinned.toml"
    config.write_text(gateway_toml(mock_port))
    port = free_port()
    proc = ServerProcess("gateway-pinned", ["serve", "--config", str(config), "--host", "127.0.0.1",
                                            "--port", str(port)], tmp_path, port, env={"MOCK_KEY": MOCK_KEY})
    proc.args = [sys.executable, "-c", PINNED, *proc.args[3:]]
    proc.start()
    try:
        proc.wait_ready("/readyz")
        assert_serves(proc.port)
        assert "with 1 worker(s)" in proc.logs(records=False), proc.logs()
        assert proc.pid is not None
        assert len(children_of(proc.pid)) == 1
    finally:
        proc.stop()


# -- /readyz during the drain ------------------------------------------------------------------------------


def readyz(port: int) -> int | None:
    """The status of ``GET /readyz`` on a new connection; None when the connection is refused or cut."""
    try:
        return http_status(port, "/readyz")
    except OSError:
        return None


def test_readyz_turns_503_on_sigterm_while_the_worker_still_serves(
    start_gateway: StartGateway, mock_port: int
) -> None:
    # a long delay: the test is done well inside it, however slow the machine
    text = gateway_toml(mock_port, server={"drain_timeout": 120.0, "drain_delay": 100.0})
    gw = start_gateway(text, name="gateway-drain-delay")
    assert readyz(gw.port) == 200
    gw.process.send_signal(signal.SIGTERM)
    wait_for(lambda: readyz(gw.port) == 503, STARTUP_TIMEOUT, what="/readyz to answer 503 after SIGTERM")
    with RawClient(gw.port) as c:
        resp = c.request(http_request("GET", "/readyz"))
    assert resp.status == 503, resp
    assert resp.json() == {"status": "draining"}, resp
    # still accepting and serving: liveness, and real requests on new connections
    assert http_status(gw.port, "/healthz") == 200
    assert_serves(gw.port)
    assert gw.process.exited() is None
    assert "accepting for 100.0 s more" in gw.process.logs(records=False)
    gw.process.stop(grace=0.1)


def test_after_the_delay_the_drain_runs_and_the_gateway_exits_cleanly(
    start_gateway: StartGateway, mock_port: int
) -> None:
    text = gateway_toml(mock_port, server={"drain_timeout": 10.0, "drain_delay": 0.5})
    gw = start_gateway(text, name="gateway-drain-end")
    gw.process.send_signal(signal.SIGTERM)
    assert gw.process.wait(STARTUP_TIMEOUT) == 0, gw.process.logs()
    logs = gw.process.logs(records=False)
    assert "accepting for 0.5 s more" in logs, logs
    assert "did not drain in time" not in logs, logs


# -- examples/cluster.toml: nodes that share one Redis ---------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis")) as server:
        yield server


def test_the_cluster_example_shares_one_limit_across_two_nodes(
    tmp_path: Path, mock_port: int, redis_server: redisproc.RedisServer
) -> None:
    text = (ROOT / "examples" / "cluster.toml").read_text()
    for shipped, here in [
        ('url = "redis://127.0.0.1:6379/0"', f'url = "{redis_server.url}"'),
        ('base_url = "http://127.0.0.1:9000/v1"', f'base_url = "http://127.0.0.1:{mock_port}/v1"'),
        # per day: no refill while the test runs, however slow the machine
        ("requests_per_minute = 10", "requests_per_day = 10"),
    ]:
        assert shipped in text, shipped
        text = text.replace(shipped, here)
    redis_server.flushall()
    nodes = [start_serve(tmp_path, f"cluster-node-{i}", text, {}) for i in (1, 2)]
    try:
        statuses = []
        for i in range(16):
            with RawClient(nodes[i % 2].port) as c:
                resp = c.request(chat_request(model="mock-1"))
            statuses.append(resp.status)
            if resp.status != 200:
                assert_openai_error(resp, 429)
        # one set of counters in Redis: 10 in all, not 10 per node
        assert statuses == [200] * 10 + [429] * 6, statuses
    finally:
        for node in nodes:
            node.stop()
