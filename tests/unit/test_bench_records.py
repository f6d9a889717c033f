"""``python -m bench.records``: the gateway with call records off, with them on, and nginx in one run; that
the harness works, never how fast anything is (skipped without nginx or wrk)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # ``bench`` is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench.configs import gateway_toml  # noqa: E402

needs_tools = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("wrk") is None,
    reason="needs nginx and wrk (apt-get install -y nginx wrk)",
)


def test_the_records_on_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_config_text

    monkeypatch.setenv("BENCH_KEY", "k")
    assert load_config_text(gateway_toml(8080, 9090, call_records=True)).log.call_records is True
    assert load_config_text(gateway_toml(8080, 9090)).log.call_records is False


@needs_tools
@pytest.mark.timeout(150)
def test_quick_run_measures_the_three_targets(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [sys.executable, "-m", "bench.records", "--quick", "--timeout", "10", "--json", str(out)]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its services and removes its temp dir
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        pytest.fail("the quick benchmark did not finish within 120 s")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert set(result["targets"]) == {"gateway", "gateway+records", "nginx"}
    for name, target in result["targets"].items():
        assert target["median_rps"] > 0 and target["error_total"] == 0, name
    # the records-on gateway wrote a record per request it answered (the probe included)
    requests = result["targets"]["gateway+records"]["rounds"][0]["requests"]
    assert result["records_written"] >= requests
    assert result["ratios"]["records_on_over_off"]["p99"] is not None
    assert "records on / off, p99" in stdout
