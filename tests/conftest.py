"""Suite-wide pytest setup.

Tests under ``tests/integration`` start real processes (the mock upstream, gateways) on loopback; they are
marked ``integration`` so that a quick run can leave them out: ``pytest -m "not integration"``.

Two gates keep a run honest on a machine that lacks something:

- ``GATEWAY_REQUIRE_EXTENSIONS=1`` (the test command exports it): a compiled module that is not built or
  not in use stops the run before any test, instead of hundreds of tests skipping and the run passing.
- ``CI=true``: a test skipped because a system tool it drives is missing (nginx, wrk, redis-server) is a
  failure, not a pass: CI installs those tools, so a skip there means the install step is broken.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

_INTEGRATION = Path(__file__).resolve().parent / "integration"
#: a skip whose reason starts with this is about a missing system tool (see ``needs_tools`` in the tests)
TOOL_SKIP_PREFIX = "needs "


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: starts real gateway and mock processes on loopback")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") != "1" or os.environ.get("GATEWAY_NO_EXTENSIONS") == "1":
        return
    import gateway._core

    missing = sorted(name for name, built in gateway._core.compiled().items() if not built)
    if missing:
        pytest.exit(f"GATEWAY_REQUIRE_EXTENSIONS=1 but not compiled: {', '.join(missing)}", returncode=3)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return report
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if reason.removeprefix("Skipped: ").startswith(TOOL_SKIP_PREFIX):
        report.outcome = "failed"
        report.longrepr = f"in CI a missing system tool is a failure, not a skip: {reason}"
    return report
