"""The usage roll-ups' parts: the latency sketch, cells and their merge, the query, the CSV export, the
store's increments (SQLite), and the roll-up thread keeping its cells while the store fails."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.observe.callrecord import CallRecord
from gateway.observe.usage import (
    CSV_COLUMNS,
    GAMMA,
    UsageConfig,
    UsageRollup,
    add_record,
    bucket_of,
    percentile,
    query,
    to_csv,
)
from gateway.store import open_store

T0 = 1_796_600_040  # a minute boundary


def rec(ms: float, *, status: int = 200, key: str | None = "k1", tenant: str | None = "acme",
        model: str = "m", ts: float = T0 + 5.0, cost: float | None = 0.001) -> CallRecord:
    return CallRecord(ts, "r", "POST", "/v1/chat/completions", status, ms, 0.1, model, "p",
                      prompt_tokens=10, completion_tokens=5, key_id=key, tenant=tenant, cost_usd=cost,
                      endpoint="chat")


def cells_of(records: list[CallRecord]) -> list[tuple[int, str, str, int]]:
    cells: dict[Any, dict[str, int]] = {}
    for r in records:
        add_record(cells, r)
    return [(start, dims.decode(), f, n) for (g, start, dims), fields in cells.items() if g == "minute"
            for f, n in fields.items()]


def test_the_sketch_reads_percentiles_within_its_relative_error() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3.0, 1.2) for _ in range(20000)]
    counts: dict[int, int] = {}
    for v in values:
        counts[bucket_of(v)] = counts.get(bucket_of(v), 0) + 1
    values.sort()
    for q in (0.5, 0.9, 0.99):
        true = values[int(q * (len(values) - 1))]
        got = percentile(counts, q)
        assert got is not None and abs(got - true) / true <= (GAMMA - 1) / (GAMMA + 1) + 0.01, (q, got, true)
    assert percentile({}, 0.5) is None


def test_cells_merge_by_adding_whatever_the_split() -> None:
    records = [rec(float(i % 50) + 0.5, status=500 if i % 9 == 0 else 200, key=f"k{i % 3}") for i in range(300)]
    whole = query(cells_of(records), "minute", ["key"], {}, 0, 2**40, total=True)
    parts = cells_of(records[:100]) + cells_of(records[100:250]) + cells_of(records[250:])
    split = query(parts, "minute", ["key"], {}, 0, 2**40, total=True)
    assert whole == split
    assert sum(r.requests for r in whole) == 300
    assert sum(r.errors for r in whole) == len([r for r in records if r.status >= 500])
    assert all(r.cost_usd == pytest.approx(r.requests * 0.001) for r in whole)


def test_query_groups_filters_and_exports_csv() -> None:
    records = [rec(5.0, key="a", tenant="t1"), rec(7.0, key="b", tenant="t2"), rec(9.0, key="c", tenant="t1"),
               rec(11.0, key=None, tenant=None, model="x", ts=T0 + 125.0)]
    cells = cells_of(records)
    rows = query(cells, "minute", ["tenant"], {}, 0, 2**40, total=True)
    assert {r.tenant: r.requests for r in rows} == {"t1": 2, "t2": 1, "": 1}
    assert all(r.key is None for r in rows)
    only = query(cells, "minute", [], {"tenant": "t1"}, 0, 2**40)
    assert [r.requests for r in only] == [2]
    per_bucket = query(cells, "minute", [], {}, 0, 2**40)
    assert [r.requests for r in per_bucket] == [3, 1]
    text = to_csv(query(cells, "minute", ["key", "model"], {}, 0, 2**40)).decode()
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert tuple(parsed[0]) == CSV_COLUMNS
    assert sorted((p["key"], p["model"], p["tenant"]) for p in parsed) == [
        ("", "x", ""), ("a", "m", ""), ("b", "m", ""), ("c", "m", "")]


def test_sqlite_increments_sum_exactly(tmp_path: Path) -> None:
    async def go() -> None:
        store = await open_store(f"sqlite://{tmp_path / 'u.db'}")
        try:
            await asyncio.gather(*(store.add_usage([("minute", 60, '["k","t","m","p"]', "requests", 1)])
                                   for _ in range(50)))
            await store.add_usage([("minute", 120, '["k","t","m","p"]', "requests", 3)])
            cells = await store.usage_cells("minute", 60, 120)
            assert sorted(cells) == [(60, '["k","t","m","p"]', "requests", 50),
                                     (120, '["k","t","m","p"]', "requests", 3)]
            await store.prune_usage("minute", 100)
            assert await store.usage_cells("minute", 0, 1000) == [(120, '["k","t","m","p"]', "requests", 3)]
        finally:
            await store.close()

    asyncio.run(go())


class FlakyStore:
    """Fails its first ``fail`` writes; records the rest."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.written: list[tuple[str, int, str, str, int]] = []
        self.wrote = threading.Event()

    async def add_usage(self, cells: Any, ttl: Any = None) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("down")
        self.written.extend(cells)
        self.wrote.set()

    async def prune_usage(self, granularity: str, before: int) -> None:
        return None

    async def close(self) -> None:
        return None


def test_the_roll_up_keeps_its_cells_while_the_store_fails_and_writes_them_once() -> None:
    store = FlakyStore(fail=2)

    async def opener() -> FlakyStore:
        return store

    rollup = UsageRollup(UsageConfig(enabled=True, flush_interval=0.05), opener)
    rollup.backoff = 0.01
    rollup.start()
    batch = [rec(3.0) for _ in range(40)]
    rollup.offer((b"", 40, batch))
    assert store.wrote.wait(10.0)
    rollup.offer((b"", 2, [rec(3.0), rec(4.0, status=502)]))
    rollup.close(5.0)
    requests = sum(n for g, _, _, f, n in store.written if g == "minute" and f == "requests")
    errors = sum(n for g, _, _, f, n in store.written if g == "day" and f == "errors")
    assert (requests, errors) == (42, 1)
    assert rollup.failures == 2 and rollup.dropped["shutdown"] == 0
