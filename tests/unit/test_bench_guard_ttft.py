"""The harness of ``bench.guard_ttft`` end to end: ``--quick`` (20 streams per target, events back to back)
against a real mock and two real gateways, guard off and on; the harness, never the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_quick_run_measures_first_content_guard_off_and_on(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "bench.guard_ttft", "--quick", "--json", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    (row,) = result["delays"]
    assert row["delay_ms"] == 0
    for name in ("guard-off", "guard-on"):
        target = row["targets"][name]
        assert target["streams"] == 20
        assert 0 < target["p50_ms"] <= target["p99_ms"]
    assert "guard adds p50" in proc.stdout
