"""``bench/rounds.py``, the loop the wrk-against-nginx benches share: round order, warm-up, the run
around a bench (stopped and cleaned whatever happens) and its exit codes. No server is started."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # ``bench`` is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench import rounds  # noqa: E402
from bench.procs import BenchError  # noqa: E402
from bench.stack import Round, Target  # noqa: E402
from bench.wrk import WrkResult  # noqa: E402


def _args(**kw: Any) -> argparse.Namespace:
    base = {"rounds": 3, "duration": 5, "warmup": 2, "server_cpus": [0], "load_cpus": [0], "keep_tmp": False,
            "json": None}
    return argparse.Namespace(**(base | kw))


def _targets(*names: str) -> list[Target]:
    return [Target(n, 0, None) for n in names]  # type: ignore[arg-type]


def test_measure_warms_up_then_runs_abba_rounds() -> None:
    done: list[tuple[str, int, int]] = []

    def round_of(t: Target, i: int, seconds: int) -> Round:
        done.append((t.name, i, seconds))
        return Round(t.name, i, 1.0, 0.5, 0.1, WrkResult(10, 1.0, 10.0), "")

    lines: list[str] = []

    def describe(i: int, r: Round) -> str:
        lines.append(f"{i} {r.target}")
        return lines[-1]

    kept = rounds.measure(_targets("gw", "ngx"), _args(), round_of, describe)
    assert done[:2] == [("gw", 0, 2), ("ngx", 0, 2)]  # warm-up, not kept
    assert [(n, i) for n, i, _ in done[2:]] == [("gw", 1), ("ngx", 1), ("ngx", 2), ("gw", 2), ("gw", 3), ("ngx", 3)]
    assert [r.target for r in kept] == ["gw", "ngx", "ngx", "gw", "gw", "ngx"]
    assert lines == ["1 gw", "1 ngx", "2 ngx", "2 gw", "3 gw", "3 ngx"]
    done.clear()
    rounds.measure(_targets("a"), _args(warmup=0, rounds=1), round_of, lambda i, r: "")
    assert done == [("a", 1, 5)]


def test_rotated_order_touches_every_target_alike() -> None:
    t = _targets("a", "b", "c")
    assert [[x.name for x in rounds.rotated(t, i)] for i in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


class _Fake:
    def __init__(self, args: argparse.Namespace, tmp: Path, tools: dict[str, Any], fail: Exception | None) -> None:
        self.tmp = tmp
        self.fail = fail
        self.stopped = False

    def run(self) -> dict[str, Any]:
        assert self.tmp.is_dir()
        if self.fail is not None:
            raise self.fail
        return {"ok": True, "n": 1}

    def stop_all(self) -> None:
        self.stopped = True


@pytest.mark.parametrize("fail", [None, BenchError("probe failed")])
def test_run_bench_stops_and_cleans_up(monkeypatch: pytest.MonkeyPatch, fail: Exception | None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(rounds, "find_tools", lambda: {})
    monkeypatch.setattr(rounds, "check_cpus", lambda args: None)
    made: list[_Fake] = []

    def make(args: argparse.Namespace, tmp: Path, tools: dict[str, Any]) -> _Fake:
        made.append(_Fake(args, tmp, tools, fail))
        return made[-1]

    done = rounds.run_bench(_args(), "bench-mends-test-", make)
    assert made[0].stopped and not made[0].tmp.exists()
    if fail is None:
        assert done is not None and done[1] == {"ok": True, "n": 1}
    else:
        assert done is None and "bench: probe failed" in capsys.readouterr().err


def test_finish_writes_the_json_and_says_whether_every_target_answered(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert rounds.finish(_args(json=str(out)), {"ok": True}, "the table") == 0
    assert json.loads(out.read_text()) == {"ok": True} and capsys.readouterr().out == "the table\n"
    assert rounds.finish(_args(), {"ok": False}, "t") == 1
