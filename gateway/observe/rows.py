"""The engine's tuple of a finished request (a row): its hand-off, and its ``CallRecord``.

``RowBatch.emit`` is what ``Engine._settle`` calls: it keeps the row until the end of the loop iteration,
when the records' hub takes the iteration's rows at once (``records.RecordSink``) to count them into the
request metrics and convert them (``to_records``) into call records. Compiled from this source
(``SOURCE_MODULES``), typed by ``rows.pxd``: the conversion is most of what a record costs (PERF: typed
locals and C-level attribute reads; the ``.py`` is the twin).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import msgspec

from gateway._core.recline import LineWriter
from gateway.limits.pricing import PriceConfig, PriceTable, price_of
from gateway.observe.callrecord import CallRecord
from gateway.observe.genai import usage_cached, usage_reasoning

__all__ = ["LineWriter", "Prices", "RowBatch", "dialect_of", "encode_rows", "to_record", "to_records"]


log = logging.getLogger("gateway.records")

#: the client dialect of a path (the rest speak OpenAI Chat Completions, Completions or Embeddings)
_DIALECTS = {"/v1/messages": "anthropic", "/v1/responses": "openai_responses"}


def dialect_of(path: str) -> str:
    return _DIALECTS.get(path, "openai")


def _ms(x: float) -> float:
    return x * 1000.0 // 1.0 / 1000.0  # PERF: three decimals (cut, not rounded) without round()


def _us(x: float) -> float:
    """A time in seconds to the microsecond (rounded; what a record's ``ts`` holds)."""
    return math.floor(x * 1000000.0 + 0.5) / 1000000.0


class RowBatch:
    """The rows emitted during the current loop iteration. The first one calls ``wake`` (the hub schedules
    its drain for the end of the iteration); ``take`` hands them all over.

    # PERF: a row costs the engine a list append here; what it is counted and converted into is done per
    iteration, in C loops, with no Python call per row. Held for an iteration only, the rows (which hold
    the request's tracked objects) die young, before the GC's young generation is collected much.
    """

    __slots__ = ("count", "rows", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.rows: list[tuple[Any, ...]] = []
        #: rows emitted since the start
        self.count = 0
        self.wake = wake

    def emit(self, row: tuple[Any, ...]) -> None:
        self.count += 1
        rows = self.rows
        rows.append(row)
        if len(rows) == 1:
            self.wake()

    def take(self) -> list[tuple[Any, ...]]:
        rows = self.rows
        if rows:
            self.rows = []
        return rows


def to_records(rows: list[tuple[Any, ...]], prices: Prices | None, out: list[CallRecord], room: int) -> int:
    """Append the records of the first ``room`` rows to ``out``; the number appended."""
    n = 0
    for row in rows:
        if n >= room:
            break
        out.append(to_record(row, prices))
        n += 1
    return n


class Prices:
    """The price table with a memo of each (upstream model, model) pair's price: a call no phase priced
    costs one dict lookup (# PERF: ``PriceTable.lookup`` is a Python method, twice per call)."""

    __slots__ = ("last", "last_model", "last_upstream", "memo", "table")

    def __init__(self, table: PriceTable) -> None:
        self.table = table
        self.memo: dict[tuple[str | None, str | None], PriceConfig | None] = {}
        #: the last pair asked and its price (# PERF: consecutive calls are mostly of one model; two string
        #: compares cost less than hashing the pair's tuple)
        self.last_upstream: object = _UNSET
        self.last_model: object = _UNSET
        self.last: PriceConfig | None = None

    def price(self, upstream_model: str | None, model: str | None) -> PriceConfig | None:
        if upstream_model == self.last_upstream and model == self.last_model:
            return self.last
        key = (upstream_model, model)
        memo = self.memo
        got = memo.get(key, _UNSET)
        if got is _UNSET:
            got = memo[key] = self._lookup(upstream_model, model)
        found: PriceConfig | None = got
        self.last_upstream, self.last_model, self.last = upstream_model, model, found
        return found

    def _lookup(self, upstream_model: str | None, model: str | None) -> PriceConfig | None:
        memo = self.memo
        found = self.table.lookup(upstream_model) if upstream_model else None
        if found is None and model:
            found = self.table.lookup(model)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        return found


#: never equal to a model name (nor to None): the memo's "not there"
_UNSET: Any = object()
#: distinct (upstream model, model) pairs remembered (names clients choose: bounded)
_MEMO_LIMIT = 4096


def to_record(row: tuple[Any, ...], prices: Prices | None = None) -> CallRecord:
    """The engine's tuple -> a CallRecord (runs in the flush, on the loop). ``prices``: the cost of a call
    no phase priced (no ``[limits]``)."""
    (ts, rid, method, path, status, duration_ms, overhead, model, provider, upstream_model, stream,
     upstream_status, upstream_ms, usage, err, worker, key, deployment, attempts, cost) = row[:20]
    endpoint = ttft_ms = cache = prompt = None
    if len(row) > 21:
        endpoint, ttft_ms = row[20], row[21]
        if len(row) > 25:
            cache, prompt = row[24], row[25]
    prompt_name = prompt_version = None
    if prompt is not None:  # "NAME@VERSION" of a prompt call
        prompt_name, _, prompt_version = prompt.partition("@")
    if usage is not None:
        prompt, completion, total = usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        # PERF: the helper only when the usage has details (the usual usage has none)
        cached = usage_cached(usage) if hasattr(usage, "prompt_tokens_details") else None
        written = getattr(usage, "cache_write_tokens", None) or None
        reasoning = usage_reasoning(usage)
        if cost is None and prices is not None:
            price = prices.price(upstream_model, model)
            if price is not None:
                cost = price_of(price, prompt, completion, cached or 0)
    else:
        prompt = completion = total = cached = written = reasoning = None
    if key is not None:
        key_id, tenant, labels = key.id, key.tenant.id, key.labels or None
    else:
        key_id = tenant = labels = None
    # PERF: positional, in field order (keywords cost ~0.4 us more)
    record = CallRecord(
        _us(ts), rid, method, path, status, _ms(duration_ms), float(overhead or 0.0), model, provider,
        upstream_model, stream, upstream_status, _ms(upstream_ms) if upstream_ms is not None else None,
        prompt, completion, total, cached, written,
        err.code if err is not None else None,
        err.message if err is not None and err.status >= 500 else None,
        worker, key_id, tenant, labels, deployment, attempts if attempts and attempts > 1 else None, cost,
        endpoint or None, _DIALECTS.get(path, "openai") if endpoint else _DIALECTS.get(path),
        _ms(ttft_ms) if ttft_ms is not None else None, reasoning,
        cache.outcome if cache is not None else None, cache.saved if cache is not None else None,
        prompt_name, prompt_version,
    )
    if cache is not None and cache.similarity is not None:  # a semantic hit
        record.cache_similarity = cache.similarity
    return record


def encode_rows(rows: list[tuple[Any, ...]], prices: Prices | None, out: LineWriter, room: int) -> int:
    """Write the records of up to ``room`` rows to ``out`` as JSON lines, the very lines ``msgspec.json``
    writes for their ``to_record`` (# PERF: without the ``CallRecord``; for records with no bodies); the
    number written. A row that cannot be written is left out and logged (the others are written)."""
    n = 0
    for row in rows:
        if n >= room:
            break
        at = out.mark()
        try:
            _encode_row(row, prices, out)
        except Exception:
            out.cut(at)
            log.exception("records: a row could not be written: %.300r", row)
            continue
        n += 1
    return n


def _encode_row(row: tuple[Any, ...], prices: Prices | None, w: LineWriter) -> None:
    """One record's line: ``to_record``'s fields, in ``CallRecord``'s order, defaults left out."""
    # PERF: indexed, not unpacked from ``row[:20]`` (a new tuple per record)
    ts, rid, method, path, status = row[0], row[1], row[2], row[3], row[4]
    duration_ms, overhead, model, provider, upstream_model = row[5], row[6], row[7], row[8], row[9]
    stream, upstream_status, upstream_ms, usage, err = row[10], row[11], row[12], row[13], row[14]
    worker, key, deployment, attempts, cost = row[15], row[16], row[17], row[18], row[19]
    endpoint = ttft_ms = cache = prompt = None
    if len(row) > 21:
        endpoint, ttft_ms = row[20], row[21]
        if len(row) > 25:
            cache, prompt = row[24], row[25]
    w.micros(b'{"ts":', ts)
    w.string(b',"request_id":', rid)
    w.string(b',"method":', method)
    w.string(b',"path":', path)
    w.integer(b',"status":', status)
    w.millis(b',"duration_ms":', duration_ms)
    if overhead:  # the engine's text of the header value (``ms_text``: as repr writes the float)
        w.number(b',"overhead_ms":', overhead if type(overhead) is str else float(overhead))
    else:
        w.raw(b',"overhead_ms":0.0')
    if model is not None:
        w.string(b',"model":', model)
    if provider is not None:
        w.string(b',"provider":', provider)
    if upstream_model is not None:
        w.string(b',"upstream_model":', upstream_model)
    if stream:
        w.raw(b',"stream":true')
    if upstream_status is not None:
        w.integer(b',"upstream_status":', upstream_status)
    if upstream_ms is not None:
        w.millis(b',"upstream_ms":', upstream_ms)
    reasoning: Any = None
    if usage is not None:
        tokens = usage.prompt_tokens
        completion = usage.completion_tokens
        total = usage.total_tokens
        # PERF: the helper only when the usage has details (the usual usage has none)
        cached = usage_cached(usage) if hasattr(usage, "prompt_tokens_details") else None
        written = getattr(usage, "cache_write_tokens", None) or None
        reasoning = usage_reasoning(usage)
        if cost is None and prices is not None:
            price = prices.price(upstream_model, model)
            if price is not None:
                cost = price_of(price, tokens, completion, cached or 0)
        if tokens is not None:
            w.integer(b',"prompt_tokens":', tokens)
        if completion is not None:
            w.integer(b',"completion_tokens":', completion)
        if total is not None:
            w.integer(b',"total_tokens":', total)
        if cached is not None:
            w.integer(b',"cached_tokens":', cached)
        if written is not None:
            w.integer(b',"cache_write_tokens":', written)
    if err is not None:
        if err.code is not None:
            w.string(b',"error_code":', err.code)
        if err.status >= 500 and err.message is not None:
            w.string(b',"error":', err.message)
    if worker is not None:
        w.integer(b',"worker":', worker)
    if key is not None:
        if key.id is not None:
            w.string(b',"key_id":', key.id)
        tenant = key.tenant.id
        if tenant is not None:
            w.string(b',"tenant":', tenant)
        labels = key.labels
        if labels:
            w.raw(b',"labels":')
            w.raw(_encode(labels))
    if deployment is not None:
        w.string(b',"deployment":', deployment)
    if attempts and attempts > 1:
        w.integer(b',"attempts":', attempts)
    if cost is not None:
        w.number(b',"cost_usd":', cost)
    if endpoint:
        w.string(b',"endpoint":', endpoint)
        w.string(b',"dialect":', _DIALECTS.get(path, "openai"))
    else:
        dialect = _DIALECTS.get(path)
        if dialect is not None:
            w.string(b',"dialect":', dialect)
    if ttft_ms is not None:
        w.millis(b',"ttft_ms":', ttft_ms)
    if reasoning is not None:
        w.integer(b',"reasoning_tokens":', reasoning)
    if cache is not None:
        if cache.outcome is not None:
            w.string(b',"cache":', cache.outcome)
        if cache.saved is not None:
            w.number(b',"cost_saved_usd":', cache.saved)
    if prompt is not None:  # "NAME@VERSION" of a prompt call
        name, _, version = prompt.partition("@")
        w.string(b',"prompt":', name)
        w.string(b',"prompt_version":', version)
    if cache is not None and cache.similarity is not None:
        w.number(b',"cache_similarity":', cache.similarity)
    w.raw(b"}\n")


_encode = msgspec.json.encode
