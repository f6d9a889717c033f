"""Tests that run against a compiled core module and its pure-Python twin alike."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def compiled_or_none(name: str) -> ModuleType | None:
    """The compiled module ``gateway._core.<name>``, or None when it is not built (an error when the run
    requires the extensions: ``GATEWAY_REQUIRE_EXTENSIONS=1``)."""
    try:
        return importlib.import_module(f"gateway._core.{name}")
    except ImportError:  # pragma: no cover - only when the extension is not built
        if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
            raise
        return None


def impls(twin: ModuleType, compiled: str) -> list[object]:
    """pytest params: the twin, and the compiled module ``compiled`` (skipped when it is not built)."""
    mod = compiled_or_none(compiled)
    return [
        pytest.param(twin, id="twin"),
        pytest.param(mod, id="compiled", marks=pytest.mark.skipif(mod is None, reason=f"{compiled} is not built")),
    ]
