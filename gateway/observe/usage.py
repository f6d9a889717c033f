"""Usage analytics: roll-ups per minute, hour and day per key, tenant, model and provider, kept in the store.

Theory of operation:

    who                 | does
    --------------------+-------------------------------------------------------------------------------
    the worker's loop   | nothing per request beyond the records hub: each flush offers the hub's batch of
                        | ``CallRecord`` s to the roll-up like to any sink (``records.RecordSink``)
    the roll-up thread  | adds each record into its cells (granularity, bucket start, dims) -> field ->
                        | count, in memory; every ``flush_interval`` writes them to the store with one
                        | atomic batch of increments (SQLite: one transaction of upserts ``n = n + ?``;
                        | Redis: one MULTI/EXEC of HINCRBY) on a store and an event loop of its own. A
                        | failed write keeps the cells (merged with the new ones) and is retried; beyond
                        | ``max_cells`` new records are dropped and counted
    the admin API       | ``usage_cells`` of the range, merged by the grouping asked for (``query``)

Why increments: every worker of every node adds its own counts to the same cells, so the stored value is
the exact sum, whatever the order; no read-modify-write, no coordination. A batch is applied whole or not
at all (a transaction), so a retried batch is never counted twice.

Each cell holds integer counts only: requests, errors (status >= 400), tokens by kind, the cost in
nano-USD, the latency sum in microseconds, and the latency sketch: ``lat.<i>`` counts requests whose
latency fell in the log bucket ``i`` (bounds ``GAMMA**(i-1) .. GAMMA**i`` ms). Sketches merge by adding
counts, like everything else, and a percentile read from them is within ``(GAMMA - 1) / (GAMMA + 1)``
(about 2%) of the true value.

Dims are the JSON array ``[key, tenant, model, provider]`` (empty strings for none): unambiguous whatever
the names hold.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec

from gateway.observe.sinks import Chunk, Sink

__all__ = [
    "CSV_COLUMNS",
    "GRANULARITIES",
    "GROUPS",
    "UsageConfig",
    "UsageRollup",
    "UsageRow",
    "add_record",
    "percentile",
    "query",
    "to_csv",
    "usage_problems",
]

log = logging.getLogger("gateway.usage")

#: seconds per bucket of each granularity
GRANULARITIES: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
#: what a query may group by (and filter on)
GROUPS: tuple[str, ...] = ("key", "tenant", "model", "provider")
#: the latency sketch's bucket ratio (relative error (GAMMA-1)/(GAMMA+1), ~2%)
GAMMA = 1.04
_LOG_GAMMA = math.log(GAMMA)
#: sketch buckets kept: latencies below GAMMA**_LOW ms (~0.01 ms) or above GAMMA**_HIGH ms (~2 h) are
#: counted in the end buckets
_LOW, _HIGH = -118, 250
_SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens",
         "cost_nusd", "latency_us")
#: the CSV export's columns, in order (docs/observability.md)
CSV_COLUMNS: tuple[str, ...] = (
    "start", "granularity", "key", "tenant", "model", "provider", "requests", "errors", "input_tokens",
    "output_tokens", "cached_tokens", "reasoning_tokens", "cost_usd", "latency_mean_ms", "latency_p50_ms",
    "latency_p90_ms", "latency_p99_ms",
)
_dims = msgspec.json.Encoder().encode
_undims = msgspec.json.Decoder(tuple[str, str, str, str]).decode


class UsageConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[usage]``: the roll-ups (docs/observability.md#usage-analytics)."""

    #: roll up every call into the store
    enabled: bool = False
    #: seconds between two writes of a worker's roll-ups to the store
    flush_interval: float = 5.0
    #: distinct cells a worker holds while the store is unavailable; beyond it records are dropped
    max_cells: int = 100_000
    #: days each granularity is kept (minute, hour, day)
    retention_minute_days: float = 7.0
    retention_hour_days: float = 90.0
    retention_day_days: float = 730.0

    def ttl(self) -> dict[str, int]:
        return {"minute": int(self.retention_minute_days * 86400),
                "hour": int(self.retention_hour_days * 86400),
                "day": int(self.retention_day_days * 86400)}


def usage_problems(uc: UsageConfig) -> Iterable[tuple[tuple[str | int, ...], str]]:
    if not (math.isfinite(uc.flush_interval) and 0.05 <= uc.flush_interval <= 3600):
        yield ("usage", "flush_interval"), f"must be 0.05 to 3600 seconds, found {uc.flush_interval}"
    if uc.max_cells < 1:
        yield ("usage", "max_cells"), f"must be 1 or more, found {uc.max_cells}"
    for name in ("retention_minute_days", "retention_hour_days", "retention_day_days"):
        v = getattr(uc, name)
        if not (math.isfinite(v) and v > 0):
            yield ("usage", name), f"must be more than 0 days, found {v}"


# --------------------------------------------------------------------------------------------------------
# The sketch


def bucket_of(ms: float) -> int:
    """The sketch bucket of a latency in ms."""
    if ms <= 0:
        return _LOW
    return max(_LOW, min(_HIGH, math.ceil(math.log(ms) / _LOG_GAMMA)))


def percentile(counts: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a sketch (bucket -> count), in ms; None when it is empty."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = q * (total - 1)
    seen = 0
    for i in sorted(counts):
        seen += counts[i]
        if seen > rank:
            return round(2.0 * GAMMA ** i / (GAMMA + 1.0), 3)
    return None  # pragma: no cover - the loop always returns


# --------------------------------------------------------------------------------------------------------
# Rolling up

Cells = dict[tuple[str, int, bytes], dict[str, int]]


def add_record(cells: Cells, rec: Any) -> None:
    """Add one ``CallRecord`` into ``cells`` at every granularity."""
    dims = _dims([rec.key_id or "", rec.tenant or "", rec.model or "", rec.provider or ""])
    lat = rec.duration_ms
    adds = {
        "requests": 1,
        "errors": 1 if rec.status >= 400 else 0,
        "input_tokens": rec.prompt_tokens or 0,
        "output_tokens": rec.completion_tokens or 0,
        "cached_tokens": rec.cached_tokens or 0,
        "reasoning_tokens": rec.reasoning_tokens or 0,
        "cost_nusd": round((rec.cost_usd or 0.0) * 1e9),
        "latency_us": round(lat * 1000.0),
        f"lat.{bucket_of(lat)}": 1,
    }
    ts = int(rec.ts)
    for gran, step in GRANULARITIES.items():
        cell = cells.setdefault((gran, ts - ts % step, dims), {})
        for f, n in adds.items():
            if n:
                cell[f] = cell.get(f, 0) + n


def _merge(into: Cells, cells: Cells) -> None:
    for k, fields in cells.items():
        cell = into.setdefault(k, {})
        for f, n in fields.items():
            cell[f] = cell.get(f, 0) + n


class UsageRollup(Sink):
    """A worker's roll-ups: a record sink whose thread aggregates and writes to the store (module table).

    ``open_store``: opens the store (called on the roll-up's own event loop, in its thread)."""

    kind = "usage"

    def __init__(self, config: UsageConfig, open_store: Callable[[], Awaitable[Any]], *,
                 queue: int = 200_000, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("usage", queue=queue)
        self.config = config
        self._open_store = open_store
        self._clock = clock
        self._cells: Cells = {}
        self._store: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.flushes = 0
        self._next_prune = 0.0

    def deliver(self, chunks: list[Chunk]) -> None:
        cells = self._cells
        bound = self.config.max_cells
        for chunk in chunks:
            for rec in chunk[2]:
                if rec.endpoint is None:  # not an API call: probes, /metrics, unknown paths
                    continue
                if len(cells) >= bound:
                    self.dropped["queue_full"] += 1
                    continue
                add_record(cells, rec)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._serve()
        finally:
            if self._store is not None:
                try:
                    self._loop.run_until_complete(self._store.close())
                except Exception:
                    pass
                self._store = None
            self._loop.close()

    def _next_chunks(self, timeout: float) -> list[Chunk] | None:
        """What is queued, waiting up to ``timeout``; [] when nothing came, None when closing."""
        with self._cond:
            if not self._chunks:
                if self._closing:
                    return None
                self._cond.wait(timeout)
            out = list(self._chunks)
            self._chunks.clear()
            return out

    def _serve(self) -> None:
        next_flush = self._clock() + self.config.flush_interval
        while True:
            chunks = self._next_chunks(max(0.0, next_flush - self._clock()))
            if chunks:
                n = sum(c[1] for c in chunks)
                self.deliver(chunks)
                self.written += n
                self._done(n)
            if chunks is None:
                self._final_flush()
                return
            if self._clock() >= next_flush:
                self._flush()
                next_flush = self._clock() + self.config.flush_interval

    def _final_flush(self) -> None:
        delay = self.backoff
        while self._cells and not self._flush():
            left = self._deadline - time.monotonic()
            if left <= 0:
                n = sum(c.get("requests", 0) for (g, _, _), c in self._cells.items() if g == "minute")
                self.dropped["shutdown"] += n
                log.warning("usage: the store is unavailable at shutdown; %d call(s) not rolled up", n)
                return
            time.sleep(min(delay, left))
            delay = min(delay * 2.0, self.max_backoff)

    def _flush(self) -> bool:
        """Write the cells held (one atomic batch); False (cells kept) when the store failed."""
        if not self._cells:
            return True
        assert self._loop is not None
        cells, self._cells = self._cells, {}
        rows = [(g, start, dims.decode(), f, n) for (g, start, dims), fields in cells.items()
                for f, n in fields.items()]
        try:
            if self._store is None:
                self._store = self._loop.run_until_complete(self._open_store())
            self._loop.run_until_complete(self._store.add_usage(rows, self.config.ttl()))
        except Exception as exc:
            _merge(self._cells, cells)
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.warning("usage: writing roll-ups failed (%s); keeping them, retrying",
                            exc.__class__.__name__ + (f": {exc}" if str(exc) else ""))
            store, self._store = self._store, None
            if store is not None:
                try:
                    self._loop.run_until_complete(store.close())
                except Exception:
                    pass
            return False
        if self._failing:
            self._failing = False
            log.info("usage: roll-ups written again")
        self.flushes += 1
        self._prune()
        return True

    def _prune(self) -> None:
        now = time.time()
        if now < self._next_prune or self._store is None:
            return
        self._next_prune = now + 3600.0
        assert self._loop is not None
        try:
            for gran, seconds in self.config.ttl().items():
                self._loop.run_until_complete(self._store.prune_usage(gran, int(now) - seconds))
        except Exception as exc:  # retention only: tried again in an hour
            log.debug("usage: pruning failed: %s", exc)


# --------------------------------------------------------------------------------------------------------
# Querying


class UsageRow(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One group of one bucket (a field is None when the query does not group by it)."""

    start: str
    granularity: str
    key: str | None = None
    tenant: str | None = None
    model: str | None = None
    provider: str | None = None
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    latency_mean_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def query(cells: Iterable[tuple[int, str, str, int]], granularity: str, group: Sequence[str],
          filters: dict[str, str], first: int, last: int, total: bool = False) -> list[UsageRow]:
    """Merge stored cells into rows: one per (bucket, group values), filtered; ``total``: one bucket for
    the whole range (its start is ``first``)."""
    merged: dict[tuple[int, tuple[str, ...]], dict[str, int]] = {}
    parsed: dict[str, tuple[str, str, str, str]] = {}
    for start, dims, field, n in cells:
        if not first <= start <= last:
            continue
        d = parsed.get(dims)
        if d is None:
            try:
                d = parsed[dims] = _undims(dims)
            except msgspec.DecodeError:
                continue
        values = dict(zip(GROUPS, d, strict=True))
        if any(values[k] != v for k, v in filters.items()):
            continue
        k = (first if total else start, tuple(values[g] for g in group))
        cell = merged.setdefault(k, {})
        cell[field] = cell.get(field, 0) + n
    rows = []
    for (start, group_values), fields in sorted(merged.items()):
        sketch = {int(f[4:]): n for f, n in fields.items() if f.startswith("lat.")}
        requests = fields.get("requests", 0)
        row = UsageRow(
            start=_iso(start), granularity=granularity,
            requests=requests, errors=fields.get("errors", 0),
            input_tokens=fields.get("input_tokens", 0), output_tokens=fields.get("output_tokens", 0),
            cached_tokens=fields.get("cached_tokens", 0), reasoning_tokens=fields.get("reasoning_tokens", 0),
            cost_usd=fields.get("cost_nusd", 0) / 1e9,
            latency_mean_ms=round(fields.get("latency_us", 0) / requests / 1000.0, 3) if requests else None,
            latency_p50_ms=percentile(sketch, 0.5), latency_p90_ms=percentile(sketch, 0.9),
            latency_p99_ms=percentile(sketch, 0.99),
        )
        for g, v in zip(group, group_values, strict=True):
            setattr(row, g, v or "")
        rows.append(row)
    return rows


def to_csv(rows: Sequence[UsageRow]) -> bytes:
    """The rows as CSV with a header of ``CSV_COLUMNS`` (empty cells for None)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(["" if (v := getattr(r, c)) is None else v for c in CSV_COLUMNS])
    return out.getvalue().encode()


