"""Each compiled core module's .pyi matches what the module really exposes (mypy's stubtest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway._core import SOURCE_MODULES, compiled

ALLOWLIST = Path(__file__).resolve().parent.parent / "stubtest-allowlist.txt"


def test_stubs_match_the_compiled_modules() -> None:
    source = {m.rsplit(".", 1)[-1] for m in SOURCE_MODULES}  # their .py is their interface
    built = [f"gateway._core._{name}" for name, is_compiled in compiled().items()
             if is_compiled and name not in source]
    if not built:
        if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
            pytest.fail("no compiled core module is built")
        pytest.skip("the compiled core is not built")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--ignore-disjoint-bases", "--allowlist", str(ALLOWLIST),
         *built],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
