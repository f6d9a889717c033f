"""The harness of ``bench.guard_cpu`` end to end: ``--quick`` (one 1-second round per target, no warm-up)
against real gateway processes, guard off and on; the harness, never the figures. Skipped without nginx
(the static upstream) or wrk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

needs_tools = pytest.mark.skipif(
    not (shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)) or not shutil.which("wrk"),
    reason="needs nginx and wrk (apt-get install -y nginx wrk)",
)


@needs_tools
@pytest.mark.timeout(120)
@pytest.mark.parametrize("prompt", ["clean", "pii"])
def test_quick_run_measures_guard_off_and_on(tmp_path: Path, prompt: str) -> None:
    out = tmp_path / "result.json"
    argv = [sys.executable, "-m", "bench.guard_cpu", "--quick", "--prompt", prompt, "--timeout", "10",
            "--json", str(out)]
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
    assert result["prompt"] == prompt
    assert set(result["targets"]) == {"guard-off", "guard-on"}
    for name, target in result["targets"].items():
        assert target["errors"] == 0, name
        (one,) = target["rounds"]
        assert one["requests"] > 0 and one["server_cpu_s"] > 0, name
        assert target["median_cpu_us_per_req"] > 0, name
    assert result["guard_overhead"] is not None
    assert "server CPU per request over guard-off" in stdout
