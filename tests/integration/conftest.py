"""Fixtures that run the real thing: the standalone mock upstream and gateways in front of it, on loopback.

Session-scoped where a process can be shared (the suite must stay fast on two slow cores); a test that
changes a process's state for good (SIGTERM, SIGHUP) starts its own through ``start_gateway``.

The main ``gateway`` fixture is parametrised over the front ends: ``native`` and ``granian``. The granian
front end (``gateway.server.rsgi``) may not exist yet; its variant is then skipped with the reason.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from .helpers import HOST, LIVE, ServerProcess, free_port, gateway_toml

FRONTENDS = ["native", "granian"]
MOCK_KEY = "sk-mock-integration"
#: a model id with a slash, as vLLM names models: quoted in TOML, percent-encoded by the SDK in URL paths
SLASHED_MODEL_ID = "org/model-x"
SLASHED_MODEL = f"""
[models."{SLASHED_MODEL_ID}"]
provider = "upstream"
upstream_model = "mock-1"
"""


@functools.cache
def _granian_unavailable() -> str | None:
    """Why the granian front end cannot run here, or None. Imported in a child, not in the test process."""
    if importlib.util.find_spec("gateway.server.rsgi") is None:
        return "gateway.server.rsgi does not exist (not written yet)"
    result = subprocess.run([sys.executable, "-c", "import gateway.server.rsgi"], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return f"gateway.server.rsgi cannot be imported: {lines[-1] if lines else result.returncode}"
    return None


def require_frontend(frontend: str) -> None:
    if frontend == "granian":
        reason = _granian_unavailable()
        if reason is not None:
            pytest.skip(f"needs the granian front end: {reason}")


@dataclass
class Gateway:
    """A running gateway: where it listens and the process behind it."""

    port: int
    process: ServerProcess
    frontend: str
    workers: int
    config_path: Path | None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def client(self, **kwargs: object) -> openai.OpenAI:
        opts: dict[str, object] = {"api_key": "k", "max_retries": 0, "timeout": 15.0, **kwargs}
        return openai.OpenAI(base_url=self.base_url, **opts)  # type: ignore[arg-type]


# -- failure reports carry the processes' logs ---------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in list(LIVE):
            title = f"stderr of {proc.name} (pid {proc.pid})"
            report.sections.append((title, proc.logs(6000, records=False)))


def _stop(proc: ServerProcess, request: pytest.FixtureRequest, failed_before: int) -> None:
    """Stop ``proc``; if a test failed while it ran, print where its logs are and their tail."""
    proc.stop()
    if request.session.testsfailed > failed_before:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"\n=== {proc.name}: logs in {proc.log_path.parent} (a test failed) ===")
            reporter.write_line(proc.logs(3000, records=False))


# -- processes ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("processes")


@pytest.fixture(scope="session")
def mock_port(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    """The standalone mock LLM (``gateway mock``): the upstream of every configured gateway."""
    port = free_port()
    proc = ServerProcess("mock", ["mock", "--port", str(port), "-q"], logs_dir, port).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        _stop(proc, request, failed)


def _launch(name: str, logs_dir: Path, *, config_text: str | None, workers: int, frontend: str,
            config_path: Path | None = None) -> Gateway:
    if config_text is not None:
        config_path = config_path or logs_dir / f"{name}.toml"
        config_path.write_text(config_text)
    for attempt in range(3):
        # a port free when picked may be taken before the gateway binds it (an ephemeral port handed to
        # some other process's outgoing connection meanwhile): the gateway then exits at once saying so,
        # and it is started again on another port
        port = free_port()
        args = ["serve", "--workers", str(workers), "--host", HOST, "--port", str(port)]
        if frontend != "native":
            args += ["--server", frontend]
        if config_path is not None and config_text is not None:
            args += ["--config", str(config_path)]
        proc = ServerProcess(name, args, logs_dir, port, env={"MOCK_KEY": MOCK_KEY}).start()
        try:
            proc.wait_ready("/readyz")
        except BaseException:
            proc.stop()
            if attempt < 2 and "cannot bind" in proc.logs(records=False):
                continue
            raise
        return Gateway(port, proc, frontend, workers, config_path)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session", params=FRONTENDS)
def gateway(request: pytest.FixtureRequest, mock_port: int, logs_dir: Path) -> Iterator[Gateway]:
    """One worker in front of the mock, short limits; each front end in turn."""
    frontend = request.param
    require_frontend(frontend)
    text = gateway_toml(mock_port, dead_port=free_port(), extra_models=SLASHED_MODEL)
    gw = _launch(f"gateway-{frontend}", logs_dir, config_text=text, workers=1, frontend=frontend)
    failed = request.session.testsfailed
    try:
        yield gw
    finally:
        _stop(gw.process, request, failed)


@pytest.fixture(scope="session", params=FRONTENDS)
def gateway2(request: pytest.FixtureRequest, mock_port: int, logs_dir: Path) -> Iterator[Gateway]:
    """Two workers in front of the mock; each front end in turn."""
    frontend = request.param
    require_frontend(frontend)
    gw = _launch(f"gateway2-{frontend}", logs_dir, config_text=gateway_toml(mock_port), workers=2,
                 frontend=frontend)
    failed = request.session.testsfailed
    try:
        yield gw
    finally:
        _stop(gw.process, request, failed)


@pytest.fixture(scope="session")
def native_gateway(request: pytest.FixtureRequest, mock_port: int, logs_dir: Path) -> Iterator[Gateway]:
    """The native front end with short limits and a one-second keep-alive, for raw-socket probes."""
    text = gateway_toml(mock_port, server={"keepalive_timeout": 1.0})
    gw = _launch("gateway-native-limits", logs_dir, config_text=text, workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gw
    finally:
        _stop(gw.process, request, failed)


@pytest.fixture(scope="session", params=FRONTENDS)
def default_gateway(request: pytest.FixtureRequest, logs_dir: Path) -> Iterator[Gateway]:
    """``gateway serve`` with no --config: the embedded default (in-process mock provider)."""
    frontend = request.param
    require_frontend(frontend)
    gw = _launch(f"gateway-default-{frontend}", logs_dir, config_text=None, workers=1, frontend=frontend)
    failed = request.session.testsfailed
    try:
        yield gw
    finally:
        _stop(gw.process, request, failed)


StartGateway = Callable[..., Gateway]


@pytest.fixture
def start_gateway(request: pytest.FixtureRequest, mock_port: int, tmp_path: Path) -> Iterator[StartGateway]:
    """Start a dedicated gateway for one test (one that signals or reconfigures it); stopped after."""
    started: list[Gateway] = []
    failed = request.session.testsfailed

    def start(config_text: str | None = None, *, workers: int = 1, frontend: str = "native",
              name: str = "gateway-dedicated") -> Gateway:
        if config_text is None:
            config_text = gateway_toml(mock_port)
        gw = _launch(f"{name}-{len(started)}", tmp_path, config_text=config_text, workers=workers,
                     frontend=frontend, config_path=tmp_path / f"{name}-{len(started)}.toml")
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            _stop(gw.process, request, failed)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    """The official OpenAI SDK pointed at ``gateway``; no retries, so every error surfaces."""
    c = gateway.client()
    try:
        yield c
    finally:
        c.close()


# Known gaps of the granian front end, left open (see docs/frontends.md): granian binds with SO_REUSEPORT
# itself, so a second instance on the same port is not refused.
_GRANIAN_KNOWN_GAPS = {
    "test_second_gateway_on_the_same_port_fails_fast[granian]":
        "granian binds with SO_REUSEPORT itself; a second instance on the port is not refused",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = _GRANIAN_KNOWN_GAPS.get(item.name)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"known granian gap: {reason}"))
