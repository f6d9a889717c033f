"""Suite-wide pytest setup.

Tests under ``tests/integration`` start real processes (the mock upstream, gateways) on loopback; they are
marked ``integration`` so that a quick run can leave them out: ``pytest -m "not integration"``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: starts real gateway and mock processes on loopback")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
