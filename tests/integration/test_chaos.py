"""The chaos soak (``bench/chaos.py``) in miniature: real mock and gateway processes, faults injected by
the mock's directives, reloads and worker stops while the load runs; every request answered, every
request that reached the engine with exactly one call record. The full-length run and its figures are in
docs/performance.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import chaos


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kill_signal", ["TERM"])
def test_every_request_is_answered_and_recorded_through_reloads_and_worker_stops(
    tmp_path: Path, kill_signal: str
) -> None:
    args = chaos._parse_args([
        "--duration", "8", "--rate", "60", "--reload-every", "2", "--kill-every", "3",
        "--kill-signal", kill_signal, "--warmup", "1", "--rss-every", "1", "--out", str(tmp_path),
    ])
    r = chaos.run(args)
    assert sum(1 for e in r["events"] if e["event"] == "reload") >= 2, r["events"]
    assert sum(1 for e in r["events"] if e["event"].startswith("SIG")) >= 1, r["events"]
    assert r["requests"] > 0
    assert r["without_answer"] == 0, r["without_answer_examples"]
    assert r["records_missing"] == 0, r["records_missing_examples"]
    assert r["records_unexpected"] == 0, r["records_unexpected_examples"]
    assert r["records_doubled"] == 0, r["records_doubled_examples"]
    assert r["healthy_at_end"]
    # the injected faults produced their statuses, so the mix really exercised the error paths
    statuses = r["statuses"]
    assert 502 in statuses["garbage"] and 500 in statuses["status-500"] and 429 in statuses["status-429"]
    assert 504 in statuses["hang"]
