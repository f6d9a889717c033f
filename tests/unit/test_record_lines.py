"""Call records written straight from the engine's rows (``rows.encode_rows`` with the compiled JSON line
writer, and both twins) are the very lines msgspec writes for the rows' ``CallRecord``s, byte for byte."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from gateway._core import recline_py
from gateway.limits.pricing import PriceTable
from gateway.observe.records import RecordSink
from gateway.observe.rows import LineWriter, Prices, encode_rows, to_record
from gateway.wire import PromptTokensDetails, Usage

compiled = pytest.importorskip("gateway._core._recline")

#: strings a record may carry: plain, empty, quotes and backslashes, control characters, DEL, non-ASCII,
#: astral, a lone surrogate's neighbour, long
STRINGS = ["", "a", "mock-1", 'q"uote', "back\\slash", "tab\there", "nl\n", "\x00\x1f", "del\x7f", "é",
           "日本語", "🙂 emoji", "x" * 300, "/v1/chat/completions", "gpt-4o-mini", "POST"]
FLOATS = [0.0, 0.0004, 0.001, 0.0015, 1.0, 1.5, 12.3456, 99.9999, 1e-9, 123456.789, 2.5e-5, 1e15, 1e16,
          1e300, -1.0, -0.0004, float("nan"), float("inf"), float("-inf")]


def _writers() -> list[Any]:
    return [compiled.LineWriter(), recline_py.LineWriter()]


@pytest.mark.parametrize("value", STRINGS + [None, 3, True, ["a"], {"k": "v"}])
def test_string_is_msgspec_json(value: Any) -> None:
    for w in _writers():
        w.string(b'"k":', value)
        assert w.take() == b'"k":' + msgspec.json.encode(value)


@pytest.mark.parametrize("value", [0, 1, -1, 7, 10, 99, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**30,
                                   True, False, None, 1.5, "12"])
def test_integer_is_msgspec_json(value: Any) -> None:
    for w in _writers():
        w.integer(b"", value)
        assert w.take() == msgspec.json.encode(value)


@pytest.mark.parametrize("value", FLOATS)
def test_millis_and_micros_are_the_cut_values_as_msgspec_writes_them(value: float) -> None:
    cut = value * 1000.0 // 1.0 / 1000.0 if math.isfinite(value) else value
    rounded = math.floor(value * 1e6 + 0.5) / 1e6 if math.isfinite(value) else value
    for w in _writers():
        w.millis(b"", value)
        assert w.take() == msgspec.json.encode(cut), value
        w.micros(b"", value)
        assert w.take() == msgspec.json.encode(rounded), value


def test_millis_random_values_equal_msgspec() -> None:
    rnd = random.Random(7)
    for _ in range(20000):
        value = rnd.choice([rnd.random(), rnd.random() * 1000, rnd.random() * 1e6, rnd.random() * 1e12,
                            rnd.randrange(10**6) / 1000.0, 1.79e9 + rnd.random() * 1e7])
        for w in _writers():
            w.millis(b"", value)
            assert w.take() == msgspec.json.encode(value * 1000.0 // 1.0 / 1000.0), value
            w.micros(b"", value)
            assert w.take() == msgspec.json.encode(math.floor(value * 1e6 + 0.5) / 1e6), value


@pytest.mark.parametrize("value", ["0.06", "12", "0.0", "1234.567", "01", "1.", ".5", "1.2.3", "1e5", "-1",
                                   " 1", "nan", "inf", "", 0.25, 1e-7, float("nan"), 3])
def test_number_writes_a_numbers_text_as_it_is_and_floats_as_msgspec(value: Any) -> None:
    for w in _writers():
        try:
            w.number(b"", value)
        except ValueError:  # text that is no number at all: as float() says
            with pytest.raises(ValueError):
                float(value)
            continue
        out = w.take()
        json.loads(out)  # always JSON
        if isinstance(value, str):
            want = float(value)
            assert out == b"null" if not math.isfinite(want) else float(out) == want
        else:
            assert out == msgspec.json.encode(value)


def test_cut_takes_back_a_line() -> None:
    for w in _writers():
        w.raw(b'{"a":1}\n')
        at = w.mark()
        w.string(b'{"b":', "half")
        w.cut(at)
        assert w.size == at
        assert w.take() == b'{"a":1}\n'
        assert w.take() == b""


# -- whole rows


def _key(labels: dict[str, str] | None) -> Any:
    return SimpleNamespace(id="key1", tenant=SimpleNamespace(id="tenantA"), labels=labels)


def _err(status: int, code: str | None, message: str | None) -> Any:
    return SimpleNamespace(status=status, code=code, message=message)


def _cache(outcome: str | None, saved: float | None, similarity: float | None) -> Any:
    return SimpleNamespace(outcome=outcome, saved=saved, similarity=similarity)


def rows(n: int, seed: int = 3) -> list[tuple[Any, ...]]:
    """``n`` engine rows with every field in its forms (the engine's tuple: ``Engine._settle``)."""
    rnd = random.Random(seed)

    def pick(*xs: Any) -> Any:
        return rnd.choice(xs)

    out = []
    for i in range(n):
        usage = pick(
            None, Usage(6, 12, 18), Usage(6, 12, 18, PromptTokensDetails(0)), Usage(1000, 10, 1010,
                                                                                     PromptTokensDetails(600)),
            SimpleNamespace(prompt_tokens=40, completion_tokens=30, total_tokens=70, cache_write_tokens=12,
                            prompt_tokens_details={"cached_tokens": 5},
                            completion_tokens_details={"reasoning_tokens": 9}),
            SimpleNamespace(prompt_tokens=3, completion_tokens=0, total_tokens=3),
        )
        row = (
            1.79e9 + rnd.random() * 1e6, pick("abc123", 'req"id', f"r{i}"), pick("POST", "GET"),
            pick("/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/embeddings", "/nope\x01"),
            pick(200, 400, 404, 429, 500, 502), rnd.random() * pick(1, 100, 10000),
            pick("0.064", "12.5", "0.0", None, 0.25, 0), pick(None, "mock-1", "gpt-4o-mini", "日本"),
            pick(None, "up", "openai"), pick(None, "mock-1", "gpt-4o-mini-2024-07-18"), pick(False, True),
            pick(None, 200, 529), pick(None, rnd.random() * 500), usage,
            pick(None, _err(429, "rate_limit_exceeded", "slow down"), _err(502, "bad_gateway", "upstream \"x\""),
                 _err(500, None, None)),
            pick(None, 0, 3), pick(None, _key(None), _key({"team": "a", "env": "prod"})),
            pick(None, "dep-1"), pick(None, 1, 2, 3), pick(None, None, 0.00123, 0.0),
        )
        tail = rnd.randrange(4)
        if tail >= 1:
            row += (pick(None, "chat", "embeddings", ""), pick(None, rnd.random() * 80))
        if tail >= 2:
            row += (None, None, pick(None, _cache("hit", 0.002, None), _cache("hit", 0.01, 0.9734),
                                     _cache("miss", None, None)),
                    pick(None, "greet@3", "bare", "a@b@c"))
        out.append(row)
    return out


def _prices() -> Prices:
    return Prices(PriceTable.load())


def test_rows_are_written_as_msgspec_writes_their_records() -> None:
    prices = _prices()
    sample = rows(3000)
    w = LineWriter()
    assert encode_rows(sample, prices, w, 1 << 30) == len(sample)
    got = w.take().splitlines(keepends=True)
    want = msgspec.json.Encoder().encode_lines([to_record(r, prices) for r in sample]).splitlines(keepends=True)
    assert len(got) == len(want) == len(sample)
    for g, x, r in zip(got, want, sample, strict=True):
        assert g == x, r


def test_rows_twins_write_the_same_lines() -> None:
    """The pure-Python rows module and line writer (no extensions) write what the compiled ones write."""
    code = (
        "import sys, test_record_lines as t\n"
        "from gateway.observe.rows import LineWriter, encode_rows\n"
        "from gateway._core import recline\n"
        "assert not recline.COMPILED\n"
        "w = LineWriter(); encode_rows(t.rows(600), t._prices(), w, 1 << 30)\n"
        "sys.stdout.buffer.write(w.take())\n"
    )
    env = {**os.environ, "GATEWAY_NO_EXTENSIONS": "1", "GATEWAY_REQUIRE_EXTENSIONS": "0",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    twin = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout
    w = LineWriter()
    encode_rows(rows(600), _prices(), w, 1 << 30)
    assert twin == w.take()


def test_room_bounds_the_rows_written() -> None:
    w = LineWriter()
    assert encode_rows(rows(10), _prices(), w, 4) == 4
    assert len(w.take().splitlines()) == 4


def test_a_row_that_cannot_be_written_is_left_out_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    good = rows(3)
    bad = (*good[0][:5], "not a number", *good[0][6:])  # a duration that is no float
    w = LineWriter()
    assert encode_rows([good[1], bad, good[2]], _prices(), w, 1 << 30) == 2
    lines = w.take().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [good[1][1], good[2][1]]
    assert "a row could not be written" in caplog.text


def test_the_hub_writes_rows_and_counts_what_it_drops() -> None:
    """Through ``RecordSink``: the lines reach the output whole, and rows beyond the queue are dropped."""
    import io

    from gateway.observe.config import RecordsConfig

    out = io.BytesIO()
    hub = RecordSink(out, config=RecordsConfig(queue=5))
    sample = rows(8)
    for r in sample:
        hub.emit(r)
    hub._drain()
    hub._flush()
    lines = out.getvalue().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [r[1] for r in sample[:5]]
    assert hub.dropped == 3


def test_the_flush_timer_runs_only_while_records_wait() -> None:
    """An idle worker has no flush timer; the first records after a flush set it, and they are written."""
    import asyncio
    import io

    from gateway.observe.config import RecordsConfig

    async def scenario() -> None:
        out = io.BytesIO()
        hub = RecordSink(out, config=RecordsConfig(flush_interval=0.01))
        hub.start()
        assert hub._handle is None  # nothing held: nothing to wake up for
        sample = rows(6)
        for burst in (sample[:3], sample[3:]):
            for r in burst:
                hub.emit(r)
            await asyncio.sleep(0)  # the iteration's drain
            assert hub._handle is not None
            deadline = asyncio.get_running_loop().time() + 5.0
            while hub._handle is not None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.005)
            assert hub._handle is None  # flushed, and not set again while idle
        lines = out.getvalue().splitlines()
        assert [json.loads(x)["request_id"] for x in lines] == [r[1] for r in sample]
        await hub.close()

    asyncio.run(scenario())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_a_sinks_thread_runs_below_the_loops_priority() -> None:
    import threading

    from gateway.observe import sinks

    seen: list[int] = []
    done = threading.Event()

    class Probe(sinks.Sink):
        def deliver(self, chunks: list[Any]) -> None:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            done.set()

    sink = Probe("probe")
    sink.start()
    sink.offer((b"{}\n", 1, ()))
    assert done.wait(10.0)
    sink.close(1.0)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(mine + sinks.NICE, 19)]
