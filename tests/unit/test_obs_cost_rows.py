"""The request metrics counted from the engine's rows equal those counted from the rows' call records, and
the records' hub drains an iteration's rows before anything reads them."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.limits.pricing import PriceConfig, PriceTable
from gateway.observe.genai import GenAIMetrics
from gateway.observe.records import RecordSink
from gateway.observe.rows import Prices, RowBatch, to_record
from gateway.wire import Usage

KEY = SimpleNamespace(id="k1", tenant=SimpleNamespace(id="t1"), labels=None)


def _row(path: str = "/v1/chat/completions", status: int = 200, usage: Any = None, *, cost: float | None = None,
         ttft: float | None = None, key: Any = None, endpoint: str | None = "chat", up: float | None = 10.0,
         deployment: str | None = None, model: str = "m") -> tuple[Any, ...]:
    return (1.0, "r", "POST", path, status, 12.3456, "0.25", model, "p", "up", ttft is not None, 200, up, usage,
            None, 0, key, deployment, 1, cost, endpoint, ttft, None, None, None, None)


ROWS = [
    _row(usage=Usage(3, 5, 8)),
    _row(usage=Usage(1000, 500, 1500)),  # priced from the table
    _row(usage=Usage(7, 9, 16), cost=0.5),  # priced by a phase
    _row(usage=SimpleNamespace(prompt_tokens=4, completion_tokens=30, total_tokens=34,
                               prompt_tokens_details={"cached_tokens": 2},
                               completion_tokens_details={"reasoning_tokens": 11}), ttft=4.0),
    _row(status=502, up=None, ttft=3.0, deployment="d1"),
    _row(path="/v1/messages", usage=Usage(2, 2, 4), key=KEY),
    _row(path="/v1/responses", status=404, usage=None, endpoint=None, up=None, model="nope"),
    _row(path="/metrics", endpoint=None, up=None),
]


def _samples(m: GenAIMetrics) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(n, lab): v for n, lab, v in m.samples()}


@pytest.mark.parametrize("labels", [[], ["tenant"], ["tenant", "key"]])
def test_rows_count_exactly_as_their_records(labels: list[str]) -> None:
    prices = Prices(PriceTable({"up": PriceConfig(input=1.0, output=2.0)}))
    from_rows, from_records = GenAIMetrics(labels), GenAIMetrics(labels)
    from_rows.observe_rows(ROWS + ROWS[:3], prices)
    from_records.observe([to_record(r, prices) for r in ROWS + ROWS[:3]])
    got, want = _samples(from_rows), _samples(from_records)
    assert got == want
    assert sum(v for (n, _), v in got.items() if n == "gateway_requests_total") == len(ROWS) + 3


def test_the_batch_wakes_once_per_iteration_and_hands_over_every_row() -> None:
    woken: list[int] = []
    batch = RowBatch(lambda: woken.append(1))
    for r in ROWS:
        batch.emit(r)
    assert woken == [1] and batch.count == len(ROWS)
    assert batch.take() == ROWS and batch.take() == []
    batch.emit(ROWS[0])
    assert woken == [1, 1] and batch.count == len(ROWS) + 1


def test_a_full_queue_drops_records_but_counts_their_metrics() -> None:
    out = io.BytesIO()
    hub = RecordSink(out, enabled=True, metrics=GenAIMetrics())
    hub._bound = 3
    for r in ROWS[:5]:
        hub.emit(r)  # no loop: drained at once
    assert hub.emitted == 5 and hub.dropped == 2
    counters, _ = hub.samples()
    assert sum(v for n, _, v in counters if n == "gateway_requests_total") == 5
    hub._flush()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 3 and all(x["path"] == "/v1/chat/completions" for x in lines)


def test_the_price_memo_answers_alternating_pairs_as_the_table() -> None:
    table = PriceTable({"a": PriceConfig(input=1.0, output=1.0), "b": PriceConfig(input=2.0, output=2.0)})
    prices = Prices(table)
    pairs = [("a", "x"), ("a", "x"), (None, "b"), ("zzz", None), (None, None), ("a", "x"), ("zzz", "b")]
    for up, model in pairs * 2:
        want = (table.lookup(up) if up else None) or (table.lookup(model) if model else None)
        assert prices.price(up, model) == want, (up, model)


def _twin(name: str) -> Any:
    """The interpreted source of ``gateway.observe.<name>`` as a module of its own (whichever is imported)."""
    import importlib.util
    from pathlib import Path

    import gateway.observe

    path = Path(gateway.observe.__file__).parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"gateway.observe._{name}_twin", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_compiled_metrics_and_records_equal_their_twins() -> None:
    genai, rows = _twin("genai"), _twin("rows")
    table = PriceTable({"up": PriceConfig(input=1.0, output=2.0)})
    for labels in ([], ["tenant", "key"]):
        built, twin = GenAIMetrics(labels), genai.GenAIMetrics(labels)
        built.observe_rows(ROWS * 2, Prices(table))
        twin.observe_rows(ROWS * 2, rows.Prices(table))
        assert _samples(built) == {(n, lab): v for n, lab, v in twin.samples()}
    assert [to_record(r, Prices(table)) for r in ROWS] == [rows.to_record(r, rows.Prices(table)) for r in ROWS]
