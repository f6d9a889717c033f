"""The cache benchmarks' harness runs (never their figures): the in-process cases answer as expected."""

from __future__ import annotations

import pytest

from bench import cache_inproc


@pytest.mark.parametrize("case", list(cache_inproc.CASES))
def test_each_in_process_case_runs(case: str) -> None:
    us = cache_inproc.measure(case, 300, 4)
    assert us > 0


def test_the_main_prints_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert cache_inproc.main(["--requests", "200", "--runs", "1", "--connections", "4"]) == 0
    out = capsys.readouterr().out
    assert all(case in out for case in cache_inproc.CASES)
